//! `lyrics-prep export`: the `instruct` table as the files fine-tuning frameworks read: LLaVA's (`llava.json`, an
//! array of `{id, image, conversations}`; or `instruct.jsonl`, one per line), ms-swift's grounding format
//! (`swift.jsonl`) and InternVL's (`internvl.jsonl`), each record built by [`super::export_records`]. The images
//! are written beside them under `images/` (pass `--image_folder DIR/images` to LLaVA, `ROOT_IMAGE_DIR=DIR` to
//! ms-swift, `root: DIR/images` to InternVL), or left out to be referenced by name. Images are named after their
//! keys, a segment too long for a file name shortened with a digest ([`lyrics_pipeline::keys::file_path`]); the
//! JSON, written last, names them so.

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

use super::export_records::{self, RecordError};
use super::runtime;
use crate::{ExportArgs, ExportFormat, ExportImages};
use lyrics_operators::text::{Size, image_file_name};

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

/// The displayed size of each key of a projected `samples` batch.
fn sizes_of_batch(batch: &RecordBatch) -> Result<Vec<(String, Size)>> {
    let int = |name: &str| -> Result<&arrow::array::Int32Array> {
        let column = batch.column_by_name(name).with_context(|| format!("the samples have no `{name}` column"))?;
        column.as_primitive_opt().with_context(|| format!("`{name}` is not an int32 column"))
    };
    let (widths, heights) = (int(col::WIDTH)?, int(col::HEIGHT)?);
    let keys = batch.column_by_name(col::KEY).context("the samples have no `key` column")?;
    let keys = keys.as_string_opt::<i32>().context("`key` is not a string column")?;
    Ok((0..batch.num_rows())
        .map(|i| {
            let size = Size::new(widths.value(i).max(1) as u32, heights.value(i).max(1) as u32);
            (keys.value(i).to_string(), size)
        })
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
        let file = to.join(match args.format {
            ExportFormat::LlavaJson => "llava.json",
            ExportFormat::Jsonl => "instruct.jsonl",
            ExportFormat::Swift => "swift.jsonl",
            ExportFormat::Internvl => "internvl.jsonl",
        });
        // InternVL's records carry each image's size: read a unit's from its samples (without the image bytes)
        // when its conversations come, so that memory holds one unit's sizes.
        let mut sample_shards: HashMap<u64, Vec<String>> = HashMap::new();
        for shard in shards(Table::Samples) {
            if let Some(unit) = unit_of_shard(&shard) {
                sample_shards.entry(unit).or_default().push(shard);
            }
        }
        let mut sizes: HashMap<String, Size> = HashMap::new();
        let mut sizes_of: Option<u64> = None;
        let mut no_template = 0usize;
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
        for shard in &instruct_shards {
            let shard_unit = unit_of_shard(shard);
            if args.format == ExportFormat::Internvl && shard_unit != sizes_of {
                sizes.clear();
                let of_unit = shard_unit.and_then(|u| sample_shards.get(&u)).cloned().unwrap_or_default();
                for_each_batch(&output, &of_unit, &[col::KEY, col::WIDTH, col::HEIGHT], |_, batch| {
                    sizes.extend(sizes_of_batch(batch)?);
                    Ok(())
                })
                .await?;
                sizes_of = shard_unit;
            }
            for_each_batch(&output, std::slice::from_ref(shard), &[], |unit, batch| {
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
                    let image = file_path(&row.image);
                    let record = match args.format {
                        ExportFormat::LlavaJson | ExportFormat::Jsonl => Ok(export_records::llava(&row, &image)),
                        // ms-swift resolves images against the working folder or ROOT_IMAGE_DIR: name them from
                        // the export folder.
                        ExportFormat::Swift => export_records::swift(&row, &format!("images/{image}")),
                        ExportFormat::Internvl => match sizes.get(&row.key) {
                            Some(size) => export_records::internvl(&row, &image, *size),
                            None => bail!("{}: the samples have no row of key {:?}", redact(&args.output), row.key),
                        },
                    };
                    let record = match record {
                        Ok(record) => record,
                        Err(RecordError::NoTemplate) => {
                            no_template += 1;
                            continue;
                        }
                        Err(e) => return Err(e).with_context(|| format!("conversation {}", row.id)),
                    };
                    if args.format == ExportFormat::LlavaJson {
                        if count > 0 {
                            writer.write_all(b",\n")?;
                        }
                        serde_json::to_writer(&mut writer, &record)?;
                    } else {
                        serde_json::to_writer(&mut writer, &record)?;
                        writer.write_all(b"\n")?;
                    }
                    count += 1;
                }
                Ok(())
            })
            .await?;
        }
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
        if no_template > 0 {
            eprintln!(
                "left out {no_template} conversations without a template: their text holds <ref-object> or <bbox>, \
                 or the output was written before schema version 3 (rerun its text stage)"
            );
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
