//! `lyrics-prep export`: the `instruct` table as the JSON files LLaVA-style trainers read (`llava.json`, an array
//! of `{id, image, conversations}`; or `instruct.jsonl`, one per line), with the images written beside them under
//! `images/` (pass `--image_folder DIR/images` to the trainer), or left out to be referenced by name.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lyrics_pipeline::{Location, StorageOptions, StoreRegistry, commit, redact};
use lyrics_schemas::{InstructRow, SampleRow, Table};
use object_store::ObjectStoreExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use serde_json::json;

use super::runtime;
use crate::{ExportArgs, ExportFormat, ExportImages};
use lyrics_operators::text::image_file_name;

/// Every batch of one table of the output, shard by shard in manifest order.
async fn read_table<T>(
    output: &Location,
    shards: &[String],
    mut each: impl FnMut(&arrow::array::RecordBatch) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for shard in shards {
        let path = output.child(shard);
        let uri = output.uri_of(&path);
        let meta = output.store.head(&path).await.with_context(|| format!("cannot read {}", redact(&uri)))?;
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(output.store.clone(), path).with_file_size(meta.size);
        let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .with_context(|| format!("{} is not a Parquet file", redact(&uri)))?
            .with_batch_size(256)
            .build()?;
        while let Some(batch) = stream.next().await {
            out.push(each(&batch.with_context(|| format!("cannot read {}", redact(&uri)))?)?);
        }
    }
    Ok(out)
}

pub fn export(args: ExportArgs) -> Result<ExitCode> {
    crate::logging::init("info");
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let to = Path::new(&args.to);
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    runtime()?.block_on(async {
        let manifest = commit::read_manifest(&output).await?.with_context(|| {
            format!(
                "{} has no _lyrics/manifest.json: the job is not finished (lyrics-prep status shows how far it is)",
                redact(&args.output)
            )
        })?;
        let shards = |table: Table| -> Vec<String> {
            manifest.shards.iter().filter(|s| s.table == table.name()).map(|s| s.path.clone()).collect()
        };
        let instruct_shards = shards(Table::Instruct);
        if instruct_shards.is_empty() {
            bail!("{} has no instruct table: run the job with --models (and [text] enabled)", redact(&args.output));
        }
        let file = match args.format {
            ExportFormat::LlavaJson => to.join("llava.json"),
            ExportFormat::Jsonl => to.join("instruct.jsonl"),
        };
        let mut writer = BufWriter::new(
            std::fs::File::create(&file).with_context(|| format!("cannot write {}", file.display()))?,
        );
        let mut count = 0usize;
        let mut keys: HashSet<String> = HashSet::new();
        if args.format == ExportFormat::LlavaJson {
            writer.write_all(b"[\n")?;
        }
        for batch_rows in read_table(&output, &instruct_shards, |b| Ok(InstructRow::from_batch(b)?)).await? {
            for row in batch_rows {
                let conversations: Vec<serde_json::Value> =
                    row.conversations.iter().map(|(f, v)| json!({ "from": f, "value": v })).collect();
                let record = json!({ "id": row.id, "image": row.image, "conversations": conversations });
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
                keys.insert(row.key);
                count += 1;
            }
        }
        if args.format == ExportFormat::LlavaJson {
            writer.write_all(b"\n]\n")?;
        }
        writer.flush()?;
        let mut images = 0usize;
        if args.images == ExportImages::Write {
            let folder = to.join("images");
            for rows in read_table(&output, &shards(Table::Samples), |b| Ok(SampleRow::from_batch(b)?)).await? {
                for row in rows.into_iter().filter(|r| keys.contains(&r.key)) {
                    let Some(bytes) = row.image.bytes.as_ref() else { continue };
                    let target = folder.join(image_file_name(&row.key, &row.format));
                    if let Some(dir) = target.parent() {
                        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    }
                    std::fs::write(&target, bytes).with_context(|| format!("cannot write {}", target.display()))?;
                    images += 1;
                }
            }
        }
        eprintln!(
            "exported {count} conversations to {} and {images} images to {}",
            file.display(),
            to.join("images").display()
        );
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
