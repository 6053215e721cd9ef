//! `lyrics-prep demo`: the whole recipe on the bundled sample corpus, on the CPU, in one command. The corpus (16
//! scenes of palette shapes, two WebDataset shards) and the refiner's fixture models are inside the binary, so the
//! demo needs nothing but ONNX Runtime: it writes them under `--to`, runs the job (ingest, tags, boxes, masks,
//! grounded text, instructions), draws the gallery, and prints where everything is and what to try next.
//!
//! When ISNet's weights are at `--isnet` (`scripts/fetch-isnet.sh`), it runs the recipe again with the
//! `salient_crop` segmenter, a real model, masking each fixture box of the first shard, into `output-isnet` and
//! `gallery-isnet`.
//!
//! Each step runs as this same executable with its ordinary subcommand, so the demo does exactly what a user's
//! commands do, and a rerun resumes like any job.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::DemoArgs;

/// The bundled corpus and models, as `(relative path, bytes)`.
const FILES: [(&str, &[u8]); 11] = [
    ("corpus/shard-00000.tar", include_bytes!("../../../examples/corpus/shard-00000.tar")),
    ("corpus/shard-00001.tar", include_bytes!("../../../examples/corpus/shard-00001.tar")),
    ("models/fixtures.toml", include_bytes!("../../../examples/models/fixtures.toml")),
    ("models/tagger.onnx", include_bytes!("../../../examples/models/tagger.onnx")),
    ("models/tags.txt", include_bytes!("../../../examples/models/tags.txt")),
    ("models/detector_idea.onnx", include_bytes!("../../../examples/models/detector_idea.onnx")),
    ("models/detector_hf.onnx", include_bytes!("../../../examples/models/detector_hf.onnx")),
    ("models/tokenizer.json", include_bytes!("../../../examples/models/tokenizer.json")),
    ("models/sam_encoder.onnx", include_bytes!("../../../examples/models/sam_encoder.onnx")),
    ("models/sam_decoder.onnx", include_bytes!("../../../examples/models/sam_decoder.onnx")),
    ("models/fixtures_hf.toml", include_bytes!("../../../examples/models/fixtures_hf.toml")),
];

pub fn demo(args: DemoArgs) -> Result<ExitCode> {
    let to = PathBuf::from(&args.to);
    for (name, bytes) in FILES {
        let path = to.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let (corpus, output, gallery) = (to.join("corpus"), to.join("output"), to.join("gallery"));
    let broken = corpus.join("shard-00002.tar");
    std::fs::write(&broken, broken_shard()?).with_context(|| format!("cannot write {}", broken.display()))?;
    let models = to.join("models/fixtures.toml");
    let isnet = Path::new(&args.isnet);
    let salient = isnet.is_file();
    let steps = if salient { 4 } else { 2 };
    eprintln!("demo: 1/{steps} running the job on {} with the fixture models (CPU)", corpus.display());
    refine(&corpus, &output, &models)?;
    eprintln!("demo: 2/{steps} drawing the gallery");
    step(&["render", "--output", &text(&output), "--to", &text(&gallery)])?;
    let salient_paths = if salient {
        let isnet = isnet.canonicalize().with_context(|| format!("cannot resolve {}", isnet.display()))?;
        let models = to.join("models/fixtures_isnet.toml");
        std::fs::write(&models, with_salient_crop(&isnet)?)
            .with_context(|| format!("cannot write {}", models.display()))?;
        let (output, gallery) = (to.join("output-isnet"), to.join("gallery-isnet"));
        // One shard of the corpus: ISNet takes seconds a box on a CPU, the fixture models milliseconds.
        let shard = corpus.join("shard-00000.tar");
        eprintln!(
            "demo: 3/{steps} running it again on {} with ISNet ({}) masking each box (salient_crop; a few \
             seconds a box on a CPU)",
            shard.display(),
            isnet.display()
        );
        refine(&shard, &output, &models)?;
        eprintln!("demo: 4/{steps} drawing its gallery");
        step(&["render", "--output", &text(&output), "--to", &text(&gallery)])?;
        Some((output, gallery))
    } else {
        eprintln!(
            "demo: ISNet weights are not at {} (scripts/fetch-isnet.sh fetches them): the salient_crop pass is left out",
            isnet.display()
        );
        None
    };
    let me = invocation();
    let mut stdout = crate::stdout::lock();
    let out = text(&output);
    writeln!(stdout)?;
    writeln!(stdout, "The gallery:  {}", gallery.join("index.html").display())?;
    writeln!(
        stdout,
        "The shards:   {out}/{{samples,errors,pretrain,instruct}}/ (Parquet; _lyrics/manifest.json lists them)"
    )?;
    if let Some((output, gallery)) = &salient_paths {
        writeln!(
            stdout,
            "With ISNet masks: {} (shards in {})",
            gallery.join("index.html").display(),
            output.display()
        )?;
    }
    writeln!(stdout)?;
    writeln!(stdout, "Try:")?;
    writeln!(
        stdout,
        "  {me} sql --output {out} \"SELECT t.tag, count(*) AS images FROM (SELECT unnest(tags) AS t FROM samples) \
         GROUP BY 1 ORDER BY 2 DESC\""
    )?;
    writeln!(stdout, "  {me} sql --output {out} \"SELECT key, lyrics FROM pretrain ORDER BY key LIMIT 5\"")?;
    writeln!(
        stdout,
        "  {me} sql --output {out} \"SELECT task, language, count(*) AS n FROM instruct GROUP BY 1, 2 ORDER BY 1, 2\""
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the recipe on `corpus` into `output` with the models of `models`.
fn refine(corpus: &Path, output: &Path, models: &Path) -> Result<()> {
    step(&[
        "run",
        "--input",
        &text(corpus),
        "--output",
        &text(output),
        "--models",
        &text(models),
        "--progress",
        "off",
        // The demo's output is the demo's own: one a version with another table layout wrote is started over.
        "--force",
    ])
}

/// The fixture models file with its segmenter replaced by `salient_crop` on the ISNet weights at `isnet`.
fn with_salient_crop(isnet: &Path) -> Result<String> {
    let fixtures = FILES
        .iter()
        .find(|(name, _)| *name == "models/fixtures.toml")
        .and_then(|(_, bytes)| std::str::from_utf8(bytes).ok())
        .context("the bundled fixtures.toml is missing")?;
    let mut config: toml::Table = fixtures.parse().context("the bundled fixtures.toml does not parse")?;
    let mut segmenter = toml::Table::new();
    segmenter.insert("family".into(), "salient_crop".into());
    segmenter.insert("model".into(), text(isnet).into());
    config.insert("segmenter".into(), segmenter.into());
    let body = toml::to_string(&config).context("cannot write the ISNet models file")?;
    Ok(format!("# The demo's fixture tagger and detector, with ISNet masking each box (salient_crop).\n{body}"))
}

/// A third shard of what real corpora hold too, so the gallery shows error cards: a file that is not an image,
/// and a caption whose image is missing. Each becomes one error row; the job goes on.
fn broken_shard() -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let members: [(&str, &[u8]); 3] = [
        ("000100.jpg", b"this file says it is a JPEG, but it is text"),
        ("000100.txt", b"a picture that never was"),
        ("000101.txt", b"a caption whose image is missing"),
    ];
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, data).context("cannot build the demo's broken shard")?;
    }
    tar.into_inner().context("cannot build the demo's broken shard")
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Runs this executable with `args`, failing with its status when it fails (its output goes to the user).
fn step(args: &[&str]) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let status = Command::new(&exe).args(args).status().with_context(|| format!("cannot run {}", exe.display()))?;
    if !status.success() {
        bail!("`lyrics-prep {}` failed ({status})", args.first().copied().unwrap_or_default());
    }
    Ok(())
}

/// How to call this executable from the current folder, for commands to paste.
fn invocation() -> String {
    let Ok(exe) = std::env::current_exe() else { return "lyrics-prep".into() };
    let relative = std::env::current_dir().ok().and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf));
    match relative {
        Some(path) => text(&path),
        None if exe.parent().is_some_and(|dir| {
            std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d == dir))
        }) =>
        {
            "lyrics-prep".into()
        }
        None => text(&exe),
    }
}
