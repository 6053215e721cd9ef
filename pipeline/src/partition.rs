//! Static partitioning of work units across workers, for an existing scheduler: worker `i` of `n` takes the units
//! `u` with `u mod n == i`. The index and count come from a flag (`I/N`) or from the scheduler's environment:
//! Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX`, with the count given) and Slurm job arrays
//! (`SLURM_ARRAY_TASK_ID` with `--workers N`, so that a retry of some tasks keeps the split; else
//! `SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`). The count is fixed at the job's
//! first start (recorded in `_lyrics/plan.json`); a worker of another count is refused.

use crate::PipelineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub index: u64,
    pub count: u64,
}

impl Default for Worker {
    fn default() -> Self {
        Worker { index: 0, count: 1 }
    }
}

impl Worker {
    pub fn new(index: u64, count: u64) -> Result<Worker, PipelineError> {
        if count == 0 || index >= count {
            return Err(PipelineError::Config(format!(
                "worker {index}/{count}: the index must be in 0..{count} and the count at least 1"
            )));
        }
        Ok(Worker { index, count })
    }

    /// Parses `I/N`.
    pub fn parse(text: &str) -> Result<Worker, PipelineError> {
        let bad = || PipelineError::Config(format!("--worker `{text}`: expected INDEX/COUNT, e.g. 0/4"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        Worker::new(i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?)
    }

    /// The worker this process is, from an explicit `I/N`, else the scheduler's environment (read through `env`),
    /// else the only worker. `workers` is the count for Kubernetes, which does not export it. Settings that
    /// disagree (a flag and the scheduler's environment, `--worker` and `--workers`) are refused by name, and so is
    /// a count of 0.
    pub fn resolve(
        explicit: Option<&str>,
        workers: Option<u64>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Worker, PipelineError> {
        if workers == Some(0) {
            return Err(PipelineError::Config("--workers 0: the worker count must be at least 1".into()));
        }
        let number = |name: &str| -> Result<Option<u64>, PipelineError> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| PipelineError::Config(format!("{name}=`{v}` is not a number")))
                })
                .transpose()
        };
        let explicit = explicit.map(|text| Worker::parse(text).map(|w| (text, w))).transpose()?;
        let scheduled = Worker::from_scheduler(workers.or(explicit.map(|(_, w)| w.count)), &number)?;
        if let Some((text, worker)) = explicit {
            if let Some(n) = workers.filter(|n| *n != worker.count) {
                return Err(PipelineError::Config(format!(
                    "--worker {text} and --workers {n} disagree on the worker count"
                )));
            }
            if let Some((from, scheduled)) = scheduled.filter(|(_, w)| *w != worker) {
                return Err(PipelineError::Config(format!(
                    "--worker {text} disagrees with the scheduler's environment ({from} makes this worker {}/{})",
                    scheduled.index, scheduled.count
                )));
            }
            return Ok(worker);
        }
        if let Some((_, worker)) = scheduled {
            return Ok(worker);
        }
        match workers {
            Some(n) if n > 1 => Err(PipelineError::Config(format!(
                "--workers {n} needs this worker's index: pass --worker I/{n}, or run under a Kubernetes Indexed Job or a Slurm array"
            ))),
            _ => Ok(Worker::default()),
        }
    }

    /// The worker the scheduler's environment names, if any, with the variables it came from.
    fn from_scheduler(
        workers: Option<u64>,
        number: &dyn Fn(&str) -> Result<Option<u64>, PipelineError>,
    ) -> Result<Option<(&'static str, Worker)>, PipelineError> {
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = workers.ok_or_else(|| {
                PipelineError::Config(
                    "JOB_COMPLETION_INDEX is set: pass --workers N with the Job's completions".into(),
                )
            })?;
            return Ok(Some(("JOB_COMPLETION_INDEX", Worker::new(index, count)?)));
        }
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            // With the count given, the array's task ids are the worker indices (`--array=0-7`, and a retry of
            // some of them, `--array=3,5`, whose own task count and minimum say nothing of the job's split).
            if let Some(count) = workers {
                let worker = Worker::new(id, count).map_err(|_| {
                    PipelineError::Config(format!(
                        "SLURM_ARRAY_TASK_ID={id} is not a worker index of --workers {count}: submit the array as \
                         --array=0-{}",
                        count.saturating_sub(1)
                    ))
                })?;
                return Ok(Some(("SLURM_ARRAY_TASK_ID", worker)));
            }
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                PipelineError::Config("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into())
            })?;
            let index = id.checked_sub(min).ok_or_else(|| {
                PipelineError::Config(format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"))
            })?;
            return Ok(Some(("SLURM_ARRAY_TASK_ID", Worker::new(index, count)?)));
        }
        Ok(None)
    }

    pub fn owns(&self, unit: u64) -> bool {
        unit % self.count == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn explicit_flag_must_agree_with_the_scheduler() {
        assert_eq!(
            Worker::resolve(Some("2/3"), None, env(&[("JOB_COMPLETION_INDEX", "2")])).unwrap(),
            Worker { index: 2, count: 3 }
        );
        let refused = Worker::resolve(Some("2/3"), None, env(&[("JOB_COMPLETION_INDEX", "0")])).unwrap_err();
        assert!(refused.to_string().contains("JOB_COMPLETION_INDEX makes this worker 0/3"), "{refused}");
        assert!(Worker::parse("3/3").is_err());
        assert!(Worker::parse("x").is_err());
    }

    #[test]
    fn settings_that_disagree_are_refused_by_name() {
        let refused = |explicit: Option<&str>, workers: Option<u64>, pairs: &[(&str, &str)]| {
            Worker::resolve(explicit, workers, env(pairs)).unwrap_err().to_string()
        };
        assert!(refused(None, Some(0), &[]).contains("--workers 0"));
        assert!(refused(Some("3/2"), None, &[]).contains("3/2"));
        assert!(refused(Some("1/4"), Some(3), &[]).contains("--workers 3"));
        let k8s = [("JOB_COMPLETION_INDEX", "2")];
        assert!(refused(Some("1/4"), Some(4), &k8s).contains("JOB_COMPLETION_INDEX"));
        let slurm = [("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", "2")];
        assert!(refused(None, Some(4), &slurm).contains("SLURM_ARRAY_TASK_ID=5"));
        // A retry of some tasks of an array of 8 (`--array=3,5`): the task id is the worker index.
        let retry = [("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "3"), ("SLURM_ARRAY_TASK_COUNT", "2")];
        assert_eq!(Worker::resolve(None, Some(8), env(&retry)).unwrap(), Worker { index: 5, count: 8 });
        // Agreeing settings are fine.
        assert_eq!(Worker::resolve(Some("2/4"), Some(4), env(&k8s)).unwrap(), Worker { index: 2, count: 4 });
    }

    #[test]
    fn kubernetes_and_slurm() {
        assert_eq!(
            Worker::resolve(None, Some(4), env(&[("JOB_COMPLETION_INDEX", "3")])).unwrap(),
            Worker { index: 3, count: 4 }
        );
        assert!(Worker::resolve(None, None, env(&[("JOB_COMPLETION_INDEX", "3")])).is_err());
        let slurm =
            env(&[("SLURM_ARRAY_TASK_ID", "6"), ("SLURM_ARRAY_TASK_MIN", "5"), ("SLURM_ARRAY_TASK_COUNT", "3")]);
        assert_eq!(Worker::resolve(None, None, slurm).unwrap(), Worker { index: 1, count: 3 });
        assert_eq!(Worker::resolve(None, None, env(&[])).unwrap(), Worker::default());
    }

    #[test]
    fn every_unit_has_exactly_one_owner() {
        for n in 1..6 {
            for u in 0..50 {
                let owners = (0..n).filter(|i| Worker { index: *i, count: n }.owns(u)).count();
                assert_eq!(owners, 1);
            }
        }
    }
}
