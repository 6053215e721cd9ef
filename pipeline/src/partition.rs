//! Static partitioning of work units across workers, for an existing scheduler: worker `i` of `n` takes the units
//! `u` with `u mod n == i`. The index and count come from a flag (`I/N`) or from the scheduler's environment:
//! Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX`, with the count given) and Slurm job arrays
//! (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`).

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
    /// else the only worker. `workers` is the count for Kubernetes, which does not export it.
    pub fn resolve(
        explicit: Option<&str>,
        workers: Option<u64>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Worker, PipelineError> {
        if let Some(text) = explicit {
            return Worker::parse(text);
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
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = workers.ok_or_else(|| {
                PipelineError::Config(
                    "JOB_COMPLETION_INDEX is set: pass --workers N with the Job's completions".into(),
                )
            })?;
            return Worker::new(index, count);
        }
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = match workers {
                Some(n) => n,
                None => number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                    PipelineError::Config("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into())
                })?,
            };
            let index = id.checked_sub(min).ok_or_else(|| {
                PipelineError::Config(format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"))
            })?;
            return Worker::new(index, count);
        }
        match workers {
            Some(n) if n > 1 => Err(PipelineError::Config(format!(
                "--workers {n} needs this worker's index: pass --worker I/{n}, or run under a Kubernetes Indexed Job or a Slurm array"
            ))),
            _ => Ok(Worker::default()),
        }
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
    fn explicit_flag_wins() {
        assert_eq!(
            Worker::resolve(Some("2/3"), None, env(&[("JOB_COMPLETION_INDEX", "0")])).unwrap(),
            Worker { index: 2, count: 3 }
        );
        assert!(Worker::parse("3/3").is_err());
        assert!(Worker::parse("x").is_err());
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
