//! `lyrics-prep export`: the `instruct` table as the JSON files LLaVA-style trainers read (`llava.json`, an array
//! of `{id, image, conversations}`; or `instruct.jsonl`, one per line), with the images written beside them under
//! `images/` (pass `--image_folder DIR/images` to the trainer), or left out to be referenced by name. Images are
//! named after their keys, a segment too long for a file name shortened with a digest
//! ([`lyrics_pipeline::keys::file_path`]); the JSON, written last, names them so.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use futures::StreamExt;
use lyrics_pipeline::keys::{file_path, safe_join};
use lyrics_pipeline::sink::unit_of_shard;
use lyrics_pipeline::{Location, OutputView, StorageOptions, StoreRegistry, redact};
use lyrics_schemas::{InstructRow, Table, col};
use object_store::ObjectStoreExt;
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use serde_json::json;

use super::runtime;
use crate::{ExportArgs, ExportFormat, ExportImages};
use lyrics_operators::text::image_file_name;

/// Calls `each` on every batch of the shards, in order, one batch in memory at a time, with the unit of the
/// batch's shard; `columns` limits what is read (all columns when empty).
async fn for_each_batch(
    output: &Location,
    shards: &[String],
    columns: &[&str],
    mut each: impl FnMut(u64, &RecordBatch) -> Result<()>,
) -> Result<()> {
    for shard in shards {
        let path = output.child(shard);
        let uri = output.uri_of(&path);
        let meta = output.store.head(&path).await.with_context(|| format!("cannot read {}", redact(&uri)))?;
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(output.store.clone(), path).with_file_size(meta.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .with_context(|| format!("{} is not a Parquet file", redact(&uri)))?;
        let builder = if columns.is_empty() {
            builder
        } else {
            let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
            builder.with_projection(mask)
        };
        let unit = unit_of_shard(shard).with_context(|| format!("{} is not named as a shard", redact(&uri)))?;
        let mut stream = builder.with_batch_size(64).build()?;
        while let Some(batch) = stream.next().await {
            each(unit, &batch.with_context(|| format!("cannot read {}", redact(&uri)))?)?;
        }
    }
    Ok(())
}

/// A sample's key, image format and image bytes.
type SampleImage = (String, String, Option<Vec<u8>>);

/// The key, format and image bytes of each row of a projected `samples` batch.
fn images_of(batch: &RecordBatch) -> Result<Vec<SampleImage>> {
    let text = |name: &str| -> Result<Vec<String>> {
        let column = batch.column_by_name(name).with_context(|| format!("the samples have no `{name}` column"))?;
        let strings = column.as_string_opt::<i32>().with_context(|| format!("`{name}` is not a string column"))?;
        Ok((0..strings.len()).map(|i| strings.value(i).to_string()).collect())
    };
    let keys = text(col::KEY)?;
    let formats = text(col::FORMAT)?;
    let image = batch.column_by_name(col::IMAGE).context("the samples have no `image` column")?.as_struct();
    let bytes = image.column_by_name(col::IMAGE_BYTES).context("the `image` column has no `bytes`")?;
    let bytes = bytes.as_binary_opt::<i32>().context("`image.bytes` is not a binary column")?;
    Ok(keys
        .into_iter()
        .zip(formats)
        .enumerate()
        .map(|(i, (key, format))| (key, format, (!bytes.is_null(i)).then(|| bytes.value(i).to_vec())))
        .collect())
}

pub fn export(args: ExportArgs) -> Result<ExitCode> {
    crate::logging::init("info");
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let to = Path::new(&args.to);
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    runtime()?.block_on(async {
        let view = OutputView::open(&output).await?.filter(OutputView::complete).with_context(|| {
            format!(
                "{} has no _lyrics/manifest.json: the job is not finished (lyrics-prep status shows how far it is)",
                redact(&args.output)
            )
        })?;
        let shards =
            |table: Table| -> Vec<String> { view.shards_of(table.name()).map(|s| s.path.clone()).collect() };
        let instruct_shards = shards(Table::Instruct);
        if instruct_shards.is_empty() {
            bail!("{} has no instruct table: run the job with --models (and [text] enabled)", redact(&args.output));
        }
        let file = match args.format {
            ExportFormat::LlavaJson => to.join("llava.json"),
            ExportFormat::Jsonl => to.join("instruct.jsonl"),
        };
        // The JSON is what a trainer opens, so it appears last and whole: written under a temporary name, renamed
        // once every image is in place. One left by an earlier export goes first, so that a failure here never
        // leaves a JSON that looks complete beside images it did not write.
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot replace {}", file.display()));
            }
            _ => {}
        }
        let mut builder = tempfile::Builder::new();
        // Readable as a file `File::create` made would be (a temporary file is the owner's alone).
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let partial = builder
            .prefix(".partial-")
            .tempfile_in(to)
            .with_context(|| format!("cannot create a temporary file in {}", to.display()))?;
        let mut writer = BufWriter::new(partial);
        let folder = to.join("images");
        let mut count = 0usize;
        let mut refused = 0usize;
        // The unit each key was first exported from. Finalizing makes keys unique across units; an output
        // finalized before it did may repeat one in a later unit, which is left out, conversations and image
        // alike, so a trainer never pairs a conversation with another image.
        let mut first_unit: HashMap<String, u64> = HashMap::new();
        let mut repeated = 0usize;
        if args.format == ExportFormat::LlavaJson {
            writer.write_all(b"[\n")?;
        }
        for_each_batch(&output, &instruct_shards, &[], |unit, batch| {
            for row in InstructRow::from_batch(batch)? {
                if *first_unit.entry(row.key.clone()).or_insert(unit) != unit {
                    repeated += 1;
                    continue;
                }
                // The image a trainer opens must lie inside the export folder, whatever the output holds.
                if let Err(why) = safe_join(&folder, &row.image) {
                    tracing::warn!(id = %row.id, "conversation left out: its image {why}");
                    refused += 1;
                    continue;
                }
                let conversations: Vec<serde_json::Value> =
                    row.conversations.iter().map(|(f, v)| json!({ "from": f, "value": v })).collect();
                let image = file_path(&row.image);
                let record = json!({ "id": row.id, "image": image, "conversations": conversations });
                match args.format {
                    ExportFormat::LlavaJson => {
                        if count > 0 {
                            writer.write_all(b",\n")?;
                        }
                        serde_json::to_writer(&mut writer, &record)?;
                    }
                    ExportFormat::Jsonl => {
                        serde_json::to_writer(&mut writer, &record)?;
                        writer.write_all(b"\n")?;
                    }
                }
                count += 1;
            }
            Ok(())
        })
        .await?;
        if args.format == ExportFormat::LlavaJson {
            writer.write_all(b"\n]\n")?;
        }
        let partial = writer.into_inner().map_err(|e| e.into_error()).context("cannot write the export")?;
        let mut images = 0usize;
        if args.images == ExportImages::Write {
            let columns = [col::KEY, col::FORMAT, col::IMAGE];
            for_each_batch(&output, &shards(Table::Samples), &columns, |unit, batch| {
                for (key, format, bytes) in images_of(batch)? {
                    let Some(bytes) = bytes.filter(|_| first_unit.get(&key) == Some(&unit)) else { continue };
                    let target = match safe_join(&folder, &image_file_name(&key, &format)) {
                        Ok(target) => target,
                        Err(why) => {
                            tracing::warn!("image left out: {why}");
                            refused += 1;
                            continue;
                        }
                    };
                    if let Some(dir) = target.parent() {
                        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    }
                    std::fs::write(&target, bytes).with_context(|| format!("cannot write {}", target.display()))?;
                    images += 1;
                }
                Ok(())
            })
            .await?;
        }
        partial.as_file().sync_all().with_context(|| format!("cannot write {}", partial.path().display()))?;
        partial.persist(&file).map_err(|e| e.error).with_context(|| format!("cannot write {}", file.display()))?;
        eprintln!(
            "exported {count} conversations to {} and {images} images to {}",
            file.display(),
            folder.display()
        );
        if repeated > 0 {
            eprintln!("left out {repeated} conversations of keys that an earlier work unit already used");
        }
        if refused > 0 {
            eprintln!("left out {refused} conversations or images whose key is not a safe file name");
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
