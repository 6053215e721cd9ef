//! End-to-end tests of scale-out on the schedulers users already run, against an S3-compatible server (moto) on
//! 127.0.0.1: the Slurm array script of `examples/` run as its array tasks would run it, the Kubernetes Indexed
//! Job's command with `JOB_COMPLETION_INDEX`; one worker killed mid-unit and rerun; the worker count fixed at the
//! first start; `status --unfinished` and `finalize`.

use crate::support;

use std::path::Path;
use std::process::Command;

use support::*;

fn shards_of(uri: &str, env: &Env, local: &Path) -> std::collections::BTreeMap<String, String> {
    download_dir(uri, env, local);
    shards(local)
}

/// A WebDataset corpus of `shards` shards in a bucket of an S3 server on 127.0.0.1, and the shards one process
/// writes from it: what every scale-out run must write too.
struct Job {
    moto: Server,
    env: Env,
    dir: tempfile::TempDir,
    input: &'static str,
    expected: std::collections::BTreeMap<String, String>,
}

fn s3_job(shards: usize) -> Job {
    let (moto, env, dir) = s3_webdataset(shards, 3);
    let input = "s3://corpus/wds";
    lyrics_ok(&["run", "--input", input, "--output", "s3://out/one", "--progress", "off"], &env);
    let expected = shards_of("s3://out/one", &env, &dir.path().join("one"));
    Job { moto, env, dir, input, expected }
}

/// Runs `examples/slurm/array.sh` as array task `task` of a job of `workers`.
fn slurm_task(
    task: u64,
    workers: u64,
    input: &str,
    output: &str,
    env: &Env,
    extra: &[(&str, &str)],
) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("examples/slurm/array.sh"))
        .args([input, output, &workers.to_string()])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .env("LYRICS_PREP", bin())
        .env("SLURM_ARRAY_TASK_ID", task.to_string())
        .env("SLURM_ARRAY_TASK_MIN", "0")
        .env("SLURM_ARRAY_TASK_COUNT", workers.to_string())
        .output()
        .expect("bash")
}

#[test]
fn array_jobs_with_a_killed_worker_write_what_one_process_writes() {
    let Job { moto: _moto, env, dir, input, expected } = s3_job(6);

    // Slurm: three array tasks of the committed script; task 1 dies before committing its first unit (unit 1).
    let out = "s3://out/slurm";
    for task in [0, 2] {
        let run = slurm_task(task, 3, input, out, &env, &[]);
        assert!(run.status.success(), "task {task}: {}", stderr(&run));
    }
    let killed = slurm_task(1, 3, input, out, &env, &[("LYRICS_FAILPOINT", "before-marker:1")]);
    assert!(!killed.status.success(), "the failpoint kills task 1");
    let unfinished = lyrics(&["status", "--output", out, "--unfinished"], &env);
    assert_eq!(String::from_utf8_lossy(&unfinished.stdout).trim(), "1", "{}", stderr(&unfinished));
    let finalize = lyrics(&["finalize", "--output", out], &env);
    assert_eq!(finalize.status.code(), Some(1), "not all units are committed: {}", stderr(&finalize));
    assert!(stderr(&finalize).contains("workers 1 still own"), "{}", stderr(&finalize));

    // A retry with another count would split the units differently: refused, saying so.
    let wrong = lyrics(&["run", "--input", input, "--output", out, "--worker", "0/2", "--progress", "off"], &env);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains("started by 3 workers"), "{}", stderr(&wrong));

    // The resubmitted task (`sbatch --array=1`: its own minimum and count are 1) finishes the job.
    let retry = Command::new("bash")
        .arg(repo_root().join("examples/slurm/array.sh"))
        .args([input, out, "3"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("LYRICS_PREP", bin())
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "1")
        .output()
        .unwrap();
    assert!(retry.status.success(), "{}", stderr(&retry));
    assert_eq!(
        String::from_utf8_lossy(&lyrics(&["status", "--output", out, "--unfinished"], &env).stdout).trim(),
        ""
    );
    let finalize = lyrics(&["finalize", "--output", out], &env);
    assert!(finalize.status.success(), "{}", stderr(&finalize));
    assert_eq!(shards_of(out, &env, &dir.path().join("slurm")), expected);

    // Kubernetes: the Indexed Job's command, one process per completion index, run concurrently.
    let out = "s3://out/k8s";
    let children: Vec<_> = (0..3)
        .map(|i| {
            Command::new(bin())
                .args(["run", "--input", input, "--output", out, "--workers", "3", "--progress", "off"])
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(shards_of(out, &env, &dir.path().join("k8s")), expected);
    let disagree = lyrics(
        &["run", "--input", input, "--output", out, "--worker", "1/3", "--workers", "3", "--progress", "off"],
        &[env.clone(), vec![("JOB_COMPLETION_INDEX".into(), "2".into())]].concat(),
    );
    assert_eq!(disagree.status.code(), Some(2));
    assert!(stderr(&disagree).contains("JOB_COMPLETION_INDEX"), "{}", stderr(&disagree));
    let zero = lyrics(&["run", "--input", input, "--output", "s3://out/zero", "--workers", "0"], &env);
    assert_eq!(zero.status.code(), Some(2));
    assert!(stderr(&zero).contains("--workers 0"), "{}", stderr(&zero));
}

/// Every object under `prefix` of the bucket, with its size and e-tag: what a worker wrote.
fn listing(uri: &str, env: &Env) -> Vec<(String, u64, Option<String>)> {
    use futures::TryStreamExt;
    let (store, prefix) = store(uri, env);
    runtime().block_on(async {
        let mut all: Vec<_> = store
            .list(Some(&prefix))
            .map_ok(|m| (m.location.to_string(), m.size, m.e_tag))
            .try_collect()
            .await
            .unwrap();
        all.sort();
        all
    })
}

#[test]
fn claiming_workers_finish_around_a_frozen_one_which_then_writes_nothing() {
    use std::io::{BufRead, BufReader};
    let Job { moto: _moto, env, dir, input, expected } = s3_job(5);

    let out = "s3://out/claims";
    let claiming = |extra: &[(&str, &str)]| {
        let mut command = Command::new(bin());
        command
            .args(["run", "--input", input, "--output", out, "--claim", "--lease-s", "2", "--progress", "off"])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .env("LYRICS_LOG", "warn")
            .stderr(std::process::Stdio::piped());
        command
    };
    // The first worker claims unit 0, writes its shards, and is frozen before its marker, past its lease.
    let mut frozen = claiming(&[("LYRICS_FAILPOINT", "pause-before-marker:0")]).spawn().unwrap();
    let mut lines = BufReader::new(frozen.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("the worker ended before its pause point").unwrap();
        let paused = line.contains("pausing");
        seen.push(line);
        if paused {
            break;
        }
    }
    let pid = frozen.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    std::thread::sleep(std::time::Duration::from_secs(3));

    // Two more claiming workers finish the job, taking over what the frozen one held.
    let others: Vec<_> = (0..2).map(|_| claiming(&[]).spawn().unwrap()).collect();
    for other in others {
        let output = other.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let local = dir.path().join("claims");
    assert_eq!(shards_of(out, &env, &local), expected, "nothing duplicated or missing");
    assert!(local.join("_SUCCESS").exists());
    let before = listing(out, &env);
    // One claim per unit, at the path scripts watch: `_lyrics/claims/UUUUUU.json`, a takeover included.
    let under = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = before
            .iter()
            .filter_map(|(path, _, _)| {
                path.split_once(&format!("/_lyrics/{dir}/")).map(|(_, name)| name.to_string())
            })
            .collect();
        names.sort();
        names
    };
    assert!(!under("done").is_empty());
    assert_eq!(under("claims"), under("done"), "a claim file named as each unit's marker");

    // Resumed, the frozen worker finds its unit taken and stops without writing.
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = frozen.wait().unwrap();
    assert!(status.success(), "{seen:?} {rest:?}");
    let text = rest.join("\n");
    assert!(text.contains("taken over"), "{text}");
    assert_eq!(listing(out, &env), before, "the resumed worker wrote nothing");
}

#[test]
fn units_run_one_task_at_a_time_write_what_one_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("wds");
    webdataset(&corpus, 4, 2);
    let input = corpus.to_string_lossy().into_owned();
    let (one, tasks) = (dir.path().join("one"), dir.path().join("tasks"));
    let run = |output: &Path, extra: &[&str]| {
        let mut args =
            vec!["run", "--input", input.as_str(), "--output", output.to_str().unwrap(), "--progress", "off"];
        args.extend_from_slice(extra);
        lyrics(&args, &Env::new())
    };
    assert!(run(&one, &[]).status.success());
    for units in [&["--unit", "2"][..], &["--unit", "0", "--unit", "3"], &["--unit", "1"]] {
        let output = run(&tasks, units);
        assert!(output.status.success(), "{units:?}: {}", stderr(&output));
    }
    assert!(tasks.join("_SUCCESS").exists(), "the task that commits the last unit finalizes");
    assert_eq!(shards(&tasks), shards(&one));
    assert_eq!(manifest(&tasks), manifest(&one));
    let missing = run(&tasks, &["--unit", "9"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--unit 9"), "{}", stderr(&missing));
}

/// A local Ray cluster on 127.0.0.1 only, stopped when dropped.
struct RayCluster {
    address: String,
    temp: tempfile::TempDir,
}

impl RayCluster {
    fn start(cpus: u32) -> RayCluster {
        let port = free_port();
        let temp = tempfile::tempdir().unwrap();
        let status = Command::new("ray")
            .args(["start", "--head", "--node-ip-address=127.0.0.1", &format!("--port={port}")])
            .args([&format!("--num-cpus={cpus}"), "--include-dashboard=false", "--disable-usage-stats"])
            .arg(format!("--temp-dir={}", temp.path().display()))
            .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("ray start (pip install ray[default])");
        assert!(status.success(), "ray start failed");
        RayCluster { address: format!("127.0.0.1:{port}"), temp }
    }
}

impl Drop for RayCluster {
    fn drop(&mut self) {
        let _ = Command::new("ray").args(["stop", "--force"]).stdout(std::process::Stdio::null()).status();
        let _ = &self.temp;
    }
}

#[test]
fn the_ray_launcher_writes_what_one_process_writes_even_when_a_task_dies() {
    let Job { moto: _moto, env, dir, input, expected } = s3_job(5);

    let cluster = RayCluster::start(2);
    let once = dir.path().join("failpoint-fired");
    let launched = Command::new("python3")
        .args(["-m", "lyrics_prep_ray", "--input", input, "--output", "s3://out/ray", "--binary", bin()])
        .args([
            "--address",
            &cluster.address,
            "--retries",
            "2",
            "--backoff-s",
            "0.2",
            "--progress-every",
            "1",
            "--units-per-task",
            "2",
        ])
        .env("PYTHONPATH", repo_root().join("python"))
        .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // Two units a task. The first process to reach unit 1's commit dies there, as under kill -9; the retry
        // redoes what that process had not committed, and gets through.
        .env("LYRICS_FAILPOINT", "before-marker:1")
        .env("LYRICS_FAILPOINT_ONCE", &once)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&launched.stderr).into_owned();
    assert!(launched.status.success(), "{text}");
    assert!(once.exists(), "a task's process was killed mid-unit");
    assert!(text.contains("units 5 done, 0 failed, 0 running of 5"), "{text}");
    // The driver's images/s comes from the tasks' `run --summary json`.
    let last = text.lines().rfind(|l| l.contains(" images/s")).unwrap_or_default();
    let rate: f64 =
        last.split("; ").nth(1).and_then(|r| r.split(' ').next()).and_then(|r| r.parse().ok()).unwrap_or(0.0);
    assert!(rate > 0.0, "{last}");
    assert_eq!(shards_of("s3://out/ray", &env, &dir.path().join("ray")), expected);
    drop(cluster);
}
