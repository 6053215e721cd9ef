//! `lyrics-prep render`: a static gallery of a job's output (`index.html`, `page-N.html`, `thumbs/`), from any
//! store `run` writes to. Samples (those `--where` chooses) come first, then the error rows; each page holds
//! `--page-size` cards.
//!
//! Memory is bounded by the page, not the table: samples stream from DataFusion in small batches, one page of them
//! is held at a time, and the page's grounded texts and conversations are looked up by key for that page alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::RecordBatch;
use datafusion::logical_expr::{col, lit};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use lyrics_operators::draw::{Annotation, annotate};
use lyrics_operators::geometry::Rle;
use lyrics_pipeline::{OutputView, StorageOptions, StoreRegistry, redact};
use lyrics_schemas::{ErrorRow, InstructRow, PretrainRow, SampleRow};
use rayon::prelude::*;

use super::runtime;
use super::sql::{message, plan, session};
use crate::RenderArgs;
use crate::gallery::{self, Summary, Thumb};

/// Longest side of a thumbnail, in pixels.
const THUMB_SIDE: u32 = 384;
/// Rows DataFusion hands over at a time: a few dozen images in memory, whatever the table's size.
const BATCH_ROWS: usize = 32;

pub fn render(args: RenderArgs) -> Result<ExitCode> {
    crate::logging::init("warn");
    if args.page_size == 0 {
        bail!("--page-size must be at least 1");
    }
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let to = PathBuf::from(&args.to);
    std::fs::create_dir_all(to.join("thumbs")).with_context(|| format!("cannot create {}", to.display()))?;
    let report = runtime()?.block_on(async {
        let view = OutputView::open(&output)
            .await?
            .with_context(|| format!("{} holds no lyrics-prep job (no _lyrics/plan.json)", redact(&args.output)))?;
        // One partition: shards are read one after the other in the manifest's order, so cards keep the job's order
        // and memory holds one batch, not one per core.
        let config = SessionConfig::new().with_batch_size(BATCH_ROWS).with_target_partitions(1);
        let ctx = session(&output, &args.output, config).await?;
        let chosen = match &args.r#where {
            Some(text) => format!("SELECT * FROM samples WHERE ({})", predicate(&ctx, text)?),
            None => "SELECT * FROM samples".to_string(),
        };
        let count_query = format!("SELECT count(*) AS n FROM ({chosen})");
        let mut samples = count(&ctx, &count_query).await?;
        if let Some(limit) = args.limit {
            samples = samples.min(limit as u64);
        }
        // Errors are their own cards after the samples, unless the samples were chosen by a predicate.
        let errors = if args.r#where.is_some() { 0 } else { view.rows("errors") };
        let cards = (samples + errors) as usize;
        let pages = cards.div_ceil(args.page_size).max(1);
        let summary = Summary {
            output: redact(&args.output),
            complete: view.complete(),
            units: (view.units_done, view.units_total()),
            items: view.items,
            tables: view.tables().into_iter().map(|t| (view.rows(&t), t)).map(|(n, t)| (t, n)).collect(),
            errors_by_kind: view.errors_by_kind.clone().into_iter().collect(),
            warnings_by_kind: view.warnings_by_kind.clone().into_iter().collect(),
            refiner: first_refiner(&ctx).await?,
            predicate: args.r#where.clone(),
        };
        let mut book = Book { to: &to, summary, pages, page_size: args.page_size, cards: Vec::new(), written: 0 };
        let mut stream = execute(&ctx, &chosen).await?;
        let mut pending: Vec<SampleRow> = Vec::new();
        let mut taken = 0u64;
        while taken < samples
            && let Some(batch) = stream.next().await
        {
            let batch = batch.map_err(|e| anyhow::anyhow!("reading the samples failed: {}", message(e)))?;
            for row in SampleRow::from_batch(&batch)? {
                if taken == samples {
                    break;
                }
                taken += 1;
                pending.push(row);
                if pending.len() == book.room() {
                    book.samples(&ctx, std::mem::take(&mut pending)).await?;
                }
            }
        }
        drop(stream);
        if !pending.is_empty() {
            book.samples(&ctx, pending).await?;
        }
        if errors > 0 {
            let mut stream = execute(&ctx, "SELECT * FROM errors").await?;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| anyhow::anyhow!("reading the errors failed: {}", message(e)))?;
                for row in ErrorRow::from_batch(&batch)? {
                    book.push(gallery::error_card(&row))?;
                }
            }
        }
        book.finish()?;
        remove_stale(&to, book.written, taken as usize)?;
        anyhow::Ok((taken, errors, book.written))
    })?;
    let (samples, errors, pages) = report;
    eprintln!(
        "rendered {samples} samples and {errors} errors on {pages} pages: open {}",
        to.join("index.html").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The `--where` predicate as SQL that can only be one expression over `samples`: the text is parsed as a single
/// expression (so `…) UNION SELECT …`, a second statement, a comment hiding the rest, or an alias is refused) and
/// printed back by the parser, which quotes and parenthesizes what it parsed, never what it was given.
fn predicate(ctx: &SessionContext, text: &str) -> Result<String> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let parsed = state
        .sql_to_expr_with_alias(text, &dialect)
        .map_err(|e| anyhow::anyhow!("--where {text:?} is not one SQL expression over samples: {}", message(e)))?;
    if let Some(alias) = parsed.alias {
        bail!("--where {text:?} names its result `{alias}`: give a predicate over samples, with no AS");
    }
    Ok(parsed.expr.to_string())
}

/// Removes what an earlier render into the same folder left past this one: pages after the last, and thumbnails
/// after the last sample's. Both are named by number, so nothing else in the folder is touched.
fn remove_stale(to: &Path, pages: usize, thumbs: usize) -> Result<()> {
    let numbered = |dir: &Path, number: &dyn Fn(&str) -> Option<usize>, keep: usize| -> Result<()> {
        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let name = entry.file_name();
            if name.to_str().and_then(number).is_some_and(|n| n > keep) {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove the stale {}", path.display()))?;
            }
        }
        Ok(())
    };
    let page = |name: &str| -> Option<usize> {
        let n = name.strip_prefix("page-")?.strip_suffix(".html")?.parse().ok()?;
        (gallery::page_file(n) == name).then_some(n)
    };
    let thumb = |name: &str| -> Option<usize> {
        let n: usize = name.strip_suffix(".jpg")?.parse().ok()?;
        (format!("{n:06}.jpg") == name).then_some(n)
    };
    numbered(to, &page, pages)?;
    numbered(&to.join("thumbs"), &thumb, thumbs)
}

async fn execute(ctx: &SessionContext, query: &str) -> Result<SendableRecordBatchStream> {
    plan(ctx, query).await?.execute_stream().await.map_err(|e| anyhow::anyhow!("the query failed: {}", message(e)))
}

async fn count(ctx: &SessionContext, query: &str) -> Result<u64> {
    let batches = plan(ctx, query).await?.collect().await.map_err(|e| anyhow::anyhow!("{}", message(e)))?;
    let batch = batches.first().context("count(*) returned nothing")?;
    let column = batch.column(0);
    let n = arrow::array::cast::AsArray::as_primitive_opt::<arrow::datatypes::Int64Type>(column.as_ref())
        .context("count(*) is not an integer")?;
    Ok(n.value(0).max(0) as u64)
}

async fn first_refiner(ctx: &SessionContext) -> Result<Option<String>> {
    let batches = plan(ctx, "SELECT refiner FROM samples WHERE refiner IS NOT NULL LIMIT 1")
        .await?
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{}", message(e)))?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else { return Ok(None) };
    let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
    let strings = arrow::array::cast::AsArray::as_string::<i32>(column.as_ref());
    Ok(Some(strings.value(0).to_string()))
}

/// The pages being written: cards accumulate until a page is full, then the page is written and dropped.
struct Book<'a> {
    to: &'a Path,
    summary: Summary,
    pages: usize,
    page_size: usize,
    cards: Vec<String>,
    /// Pages written so far.
    written: usize,
}

impl Book<'_> {
    /// Cards the current page still has room for.
    fn room(&self) -> usize {
        self.page_size - self.cards.len()
    }

    fn push(&mut self, card: String) -> Result<()> {
        self.cards.push(card);
        if self.cards.len() == self.page_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.written += 1;
        let html = gallery::page(&self.summary, self.written, self.pages, &self.cards.concat());
        let file = self.to.join(gallery::page_file(self.written));
        std::fs::write(&file, html).with_context(|| format!("cannot write {}", file.display()))?;
        self.cards.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if !self.cards.is_empty() || self.written == 0 {
            self.flush()?;
        }
        Ok(())
    }

    /// The cards of `rows` (at most a page): thumbnails drawn in parallel, grounded texts and conversations
    /// looked up by key.
    async fn samples(&mut self, ctx: &SessionContext, rows: Vec<SampleRow>) -> Result<()> {
        let keys: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
        let pretrain: HashMap<String, PretrainRow> = lookup(ctx, "pretrain", &keys, PretrainRow::from_batch)
            .await?
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect();
        let mut conversations: HashMap<String, Vec<InstructRow>> = HashMap::new();
        for row in lookup(ctx, "instruct", &keys, InstructRow::from_batch).await? {
            conversations.entry(row.key.clone()).or_default().push(row);
        }
        let first = self.written * self.page_size + self.cards.len();
        let thumbs_dir = self.to.join("thumbs");
        let thumbs: Vec<Result<Thumb, String>> = tokio::task::block_in_place(|| {
            rows.par_iter().enumerate().map(|(i, row)| thumbnail(row, &thumbs_dir, first + i + 1)).collect()
        });
        for (row, thumb) in rows.iter().zip(thumbs) {
            let talks: Vec<&InstructRow> =
                conversations.get(&row.key).map(|c| c.iter().collect()).unwrap_or_default();
            let card =
                gallery::sample_card(row, thumb.as_ref().map_err(String::as_str), pretrain.get(&row.key), &talks);
            self.push(card)?;
        }
        Ok(())
    }
}

/// The rows of `table` whose key is one of `keys`.
async fn lookup<T>(
    ctx: &SessionContext,
    table: &str,
    keys: &[String],
    read: impl Fn(&RecordBatch) -> Result<Vec<T>, lyrics_schemas::SchemaError>,
) -> Result<Vec<T>> {
    if keys.is_empty() || !ctx.table_exist(table)? {
        return Ok(Vec::new());
    }
    // The range of the keys as well as the list: shards hold their rows sorted by key, so row groups and pages
    // outside the range are skipped from their statistics (DataFusion prunes with short IN lists only).
    let (Some(low), Some(high)) = (keys.iter().min(), keys.iter().max()) else { return Ok(Vec::new()) };
    let in_range = col("key").between(lit(low.as_str()), lit(high.as_str()));
    let frame = ctx
        .table(table)
        .await?
        .filter(in_range.and(col("key").in_list(keys.iter().map(|k| lit(k.as_str())).collect(), false)))
        .map_err(|e| anyhow::anyhow!("{}", message(e)))?;
    let mut out = Vec::new();
    let mut stream = frame.execute_stream().await.map_err(|e| anyhow::anyhow!("{}", message(e)))?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| anyhow::anyhow!("reading {table} failed: {}", message(e)))?;
        out.extend(read(&batch)?);
    }
    Ok(out)
}

/// Draws the annotated thumbnail of `row` as `thumbs/NNNNNN.jpg` (named by card number, never by key).
fn thumbnail(row: &SampleRow, dir: &Path, number: usize) -> Result<Thumb, String> {
    let bytes = row.image.bytes.as_deref().ok_or("the sample holds no image bytes")?;
    let masks: Vec<Option<Rle>> = row
        .objects
        .iter()
        .flatten()
        .map(|o| {
            o.mask
                .as_ref()
                .map(|m| Rle { size: [m.size[0].max(0) as u32, m.size[1].max(0) as u32], counts: m.counts.clone() })
        })
        .collect();
    let annotations: Vec<Annotation<'_>> = row
        .objects
        .iter()
        .flatten()
        .zip(&masks)
        .map(|(o, mask)| Annotation { label: &o.label, score: o.score, bbox: o.bbox, mask: mask.as_ref() })
        .collect();
    let image = annotate(bytes, &annotations, THUMB_SIDE).map_err(|e| e.to_string())?;
    let file = format!("thumbs/{number:06}.jpg");
    let path = dir.join(format!("{number:06}.jpg"));
    let mut encoded = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut encoded, 90);
    // Full-resolution chroma keeps thin coloured box edges their colour.
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
    encoder
        .encode(image.as_raw(), image.width() as u16, image.height() as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| format!("cannot encode the thumbnail: {e}"))?;
    std::fs::write(&path, encoded).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Thumb { file, width: image.width(), height: image.height() })
}
