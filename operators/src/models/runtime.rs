//! ONNX Runtime: one environment per process, sessions on the CPU or a CUDA device, and a small typed wrapper
//! over `Session::run`.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`): from `ORT_DYLIB_PATH`, else `libonnxruntime.so`
//! beside the executable, else `.ort/libonnxruntime.so` under the working directory (where
//! `scripts/fetch-onnxruntime.sh` puts it). A missing library is a clear error, never a panic. `--device cuda:N`
//! registers the CUDA execution provider and fails if it cannot: there is no silent CPU fallback. Telemetry is
//! switched off (here, and with `ORT_DISABLE_TELEMETRY` in the binary), so a run writes nothing outside its output
//! and its model cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::ModelError;

/// Where sessions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on this device id.
    Cuda(i32),
}

impl Device {
    /// Parses `cpu` or `cuda:N` (`cuda` alone is `cuda:0`).
    pub fn parse(text: &str) -> Result<Device, ModelError> {
        match text.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(Device::Cuda)
                .ok_or_else(|| ModelError::Config(format!("--device `{other}`: expected cpu or cuda:N"))),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The ONNX Runtime library this process loads.
pub fn library_path() -> Result<PathBuf, ModelError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("libonnxruntime.so")));
    let candidates = beside.into_iter().chain([PathBuf::from(".ort/libonnxruntime.so")]);
    for candidate in candidates {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(ModelError::Runtime(
        "the ONNX Runtime library was not found: set ORT_DYLIB_PATH to libonnxruntime.so, or run \
         scripts/fetch-onnxruntime.sh"
            .into(),
    ))
}

fn environment() -> Result<&'static ort::environment::Environment, ModelError> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = library_path().map_err(|e| e.to_string())?;
        if !path.exists() {
            return Err(format!("ONNX Runtime library {} does not exist (ORT_DYLIB_PATH)", path.display()));
        }
        // ort panics inside its loader on some failures; keep that a clear error too.
        let built = std::panic::catch_unwind(|| -> Result<ort::environment::Environment, String> {
            let builder = ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
            // Microsoft's builds send telemetry events by default. This stops the events; the event database they
            // open under ~/.cache/Microsoft when the environment is created is kept away only by the library's
            // ORT_DISABLE_TELEMETRY, which the lyrics-prep binary sets before anything is loaded.
            builder
                .with_name("lyrics-prep")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        });
        built.unwrap_or_else(|_| Err(format!("cannot load ONNX Runtime from {}", path.display())))
    });
    env.as_ref().map_err(|e| ModelError::Runtime(e.clone()))
}

/// The element type of a graph input or output, as far as the refiner cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    F32,
    I64,
    I32,
    Bool,
    /// Anything else (f16, u8, strings, ...).
    Other,
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Element::F32 => "f32",
            Element::I64 => "i64",
            Element::I32 => "i32",
            Element::Bool => "bool",
            Element::Other => "other",
        })
    }
}

/// A graph input or output as the graph declares it: its name, element type and dimensions (`None`: dynamic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub element: Element,
    pub dims: Vec<Option<usize>>,
}

impl Port {
    fn of(name: &str, dtype: &ValueType) -> Port {
        let element = match dtype.tensor_type() {
            Some(TensorElementType::Float32) => Element::F32,
            Some(TensorElementType::Int64) => Element::I64,
            Some(TensorElementType::Int32) => Element::I32,
            Some(TensorElementType::Bool) => Element::Bool,
            _ => Element::Other,
        };
        let dims = dtype
            .tensor_shape()
            .map(|shape| shape.iter().map(|d| usize::try_from(*d).ok()).collect())
            .unwrap_or_default();
        Port { name: name.to_string(), element, dims }
    }

    /// The declared dimension `axis`, when static.
    pub fn dim(&self, axis: usize) -> Option<usize> {
        self.dims.get(axis).copied().flatten()
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.map_or("?".to_string(), |d| d.to_string())).collect();
        write!(f, "{} {}[{}]", self.name, self.element, dims.join(", "))
    }
}

/// A known ONNX contract of a family: the key that selects it and the names it needs.
#[derive(Debug, Clone, Copy)]
pub struct Contract {
    /// How the models file names it (`export = "hf"`, `family = "sam2"`, ...).
    pub key: &'static str,
    pub inputs: &'static [&'static str],
    pub outputs: &'static [&'static str],
}

impl Contract {
    /// Whether `model` has every input and output this contract needs.
    pub fn matches(&self, model: &OnnxModel) -> bool {
        self.inputs.iter().all(|i| model.input(i).is_some())
            && self.outputs.iter().all(|o| model.output(o).is_some())
    }
}

/// The refusal of a graph that does not follow the contract the models file names: what the graph has, and what
/// each known contract needs, so the user can tell which file or which key is wrong.
pub fn refuse(model: &OnnxModel, wanted: &str, contracts: &[Contract]) -> ModelError {
    let has = |ports: &[Port]| ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let mut message = format!(
        "the graph does not follow {wanted}; it has inputs ({}) and outputs ({})",
        has(&model.input_ports),
        has(&model.output_ports)
    );
    for c in contracts {
        message.push_str(&format!(
            "; {} needs inputs ({}) and outputs ({})",
            c.key,
            c.inputs.join(", "),
            c.outputs.join(", ")
        ));
    }
    if let Some(c) = contracts.iter().find(|c| c.matches(model)) {
        message.push_str(&format!(" (this graph follows {}: set that in the models file)", c.key));
    }
    ModelError::Contract { model: model.name.clone(), message }
}

/// A loaded model: one session, its input and output names, and the time spent in `run`.
pub struct OnnxModel {
    /// The model's key for messages (`tagger`, `segmenter.decoder`, ...).
    pub name: String,
    session: Session,
    /// The graph's input names, in order.
    pub inputs: Vec<String>,
    /// The graph's output names, in order.
    pub outputs: Vec<String>,
    /// The graph's inputs as declared: element types and static dimensions.
    pub input_ports: Vec<Port>,
    /// The graph's outputs as declared.
    pub output_ports: Vec<Port>,
    /// Total time inside `Session::run`.
    pub run_time: Duration,
    /// CPU time of the calling thread inside `Session::run` (on the CPU provider, its share of the compute), so
    /// that the thread's CPU time outside the sessions can be told from its waits for a core.
    pub run_cpu: Duration,
    /// Number of `Session::run` calls.
    pub runs: u64,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("name", &self.name).field("inputs", &self.inputs).finish()
    }
}

/// A dense f32 output: shape and values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// An f32 output of a run, in the session's own buffer.
#[derive(Debug)]
pub struct View<'a> {
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// One input value of a run, borrowed: sessions read the caller's buffers in place, with no copy.
pub enum Input<'a> {
    /// A shape and f32 values, row-major.
    F32(Vec<usize>, &'a [f32]),
    /// A shape and i64 values, row-major.
    I64(Vec<usize>, &'a [i64]),
    /// A shape and bool values, row-major.
    Bool(Vec<usize>, &'a [bool]),
}

impl OnnxModel {
    /// Loads `path` on `device` with `threads` intra-op threads (0: ONNX Runtime's default).
    pub fn load(name: &str, path: &Path, device: Device, threads: usize) -> Result<OnnxModel, ModelError> {
        let env = environment()?;
        let fail = |what: &str, e: &dyn std::fmt::Display| ModelError::Load {
            model: name.to_string(),
            path: path.display().to_string(),
            message: format!("{what}: {e}"),
        };
        let mut builder = Session::builder(env).map_err(|e| fail("session", &e))?;
        builder = builder
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail("optimization", &e))?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| fail("threads", &e))?;
        }
        // Idle intra-op threads would spin-wait for the next run, taking the cores the pipeline's decode and
        // pre/post-processing stages need in the meantime.
        builder = builder.with_intra_op_spinning(false).map_err(|e| fail("spinning", &e))?;
        if let Device::Cuda(id) = device {
            let cuda = ort::ep::CUDA::default().with_device_id(id).build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| ModelError::Device {
                device: device.to_string(),
                message: format!(
                    "the CUDA execution provider could not be registered ({e}); it needs the onnxruntime-gpu library \
                     (scripts/fetch-onnxruntime.sh --gpu, then ORT_DYLIB_PATH=.ort-gpu/libonnxruntime.so), CUDA 13 and cuDNN 9"
                ),
            })?;
        }
        let session = builder.commit_from_file(path).map_err(|e| fail("load", &e))?;
        let input_ports: Vec<Port> = session.inputs().iter().map(|i| Port::of(i.name(), i.dtype())).collect();
        let output_ports: Vec<Port> = session.outputs().iter().map(|o| Port::of(o.name(), o.dtype())).collect();
        Ok(OnnxModel {
            name: name.to_string(),
            session,
            inputs: input_ports.iter().map(|p| p.name.clone()).collect(),
            outputs: output_ports.iter().map(|p| p.name.clone()).collect(),
            input_ports,
            output_ports,
            run_time: Duration::ZERO,
            run_cpu: Duration::ZERO,
            runs: 0,
        })
    }

    /// The declared input `name`.
    pub fn input(&self, name: &str) -> Option<&Port> {
        self.input_ports.iter().find(|p| p.name == name)
    }

    /// The declared output `name`.
    pub fn output(&self, name: &str) -> Option<&Port> {
        self.output_ports.iter().find(|p| p.name == name)
    }

    /// Checks the model has the named inputs and outputs of its contract.
    pub fn expect(&self, inputs: &[&str], outputs: &[&str]) -> Result<(), ModelError> {
        for want in inputs {
            if !self.inputs.iter().any(|i| i == want) {
                return Err(ModelError::Contract {
                    model: self.name.clone(),
                    message: format!("no input `{want}` (inputs: {})", self.inputs.join(", ")),
                });
            }
        }
        for want in outputs {
            if !self.outputs.iter().any(|o| o == want) {
                return Err(ModelError::Contract {
                    model: self.name.clone(),
                    message: format!("no output `{want}` (outputs: {})", self.outputs.join(", ")),
                });
            }
        }
        Ok(())
    }

    /// Runs the model on named inputs; returns the named f32 outputs.
    pub fn run(
        &mut self,
        inputs: Vec<(&str, Input<'_>)>,
        outputs: &[&str],
    ) -> Result<HashMap<String, Output>, ModelError> {
        self.run_with(inputs, outputs, |views| {
            outputs
                .iter()
                .zip(views)
                .map(|(name, view)| {
                    (name.to_string(), Output { shape: view.shape.clone(), data: view.data.to_vec() })
                })
                .collect()
        })
    }

    /// Runs the model on named inputs and hands `read` the named f32 outputs in place, in the order of `outputs`,
    /// so a caller that needs part of an output (one mask plane of four) copies only that part.
    pub fn run_with<R>(
        &mut self,
        inputs: Vec<(&str, Input<'_>)>,
        outputs: &[&str],
        read: impl FnOnce(&[View<'_>]) -> R,
    ) -> Result<R, ModelError> {
        let fail = |e: &dyn std::fmt::Display| ModelError::Run { model: self.name.clone(), message: e.to_string() };
        let mut values: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        // Masks and ids go in the element type the graph declares (exports disagree on bool, i64 and i32 for the
        // same input); the converted copies live until the run is over.
        let mut converted: Vec<Converted> = Vec::new();
        let mut plan: Vec<(&str, Result<Input<'_>, usize>)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let want = self.input(name).map(|p| p.element);
            match (input, want) {
                (Input::I64(shape, data), Some(Element::Bool)) => {
                    converted.push(Converted::Bool(shape, data.iter().map(|v| *v != 0).collect()));
                    plan.push((name, Err(converted.len() - 1)));
                }
                (Input::I64(shape, data), Some(Element::I32)) => {
                    let values = data.iter().map(|v| i32::try_from(*v).unwrap_or(i32::MAX)).collect();
                    converted.push(Converted::I32(shape, values));
                    plan.push((name, Err(converted.len() - 1)));
                }
                (Input::Bool(shape, data), Some(Element::I64)) => {
                    converted.push(Converted::I64(shape, data.iter().map(|v| i64::from(*v)).collect()));
                    plan.push((name, Err(converted.len() - 1)));
                }
                (input, _) => plan.push((name, Ok(input))),
            }
        }
        for (name, input) in plan {
            let value: ort::session::SessionInputValue<'_> = match input {
                Ok(Input::F32(shape, data)) => {
                    TensorRef::from_array_view((shape, data)).map_err(|e| fail(&e))?.into()
                }
                Ok(Input::I64(shape, data)) => {
                    TensorRef::from_array_view((shape, data)).map_err(|e| fail(&e))?.into()
                }
                Ok(Input::Bool(shape, data)) => {
                    TensorRef::from_array_view((shape, data)).map_err(|e| fail(&e))?.into()
                }
                Err(i) => match &converted[i] {
                    Converted::Bool(shape, data) => {
                        TensorRef::from_array_view((shape.clone(), data.as_slice())).map_err(|e| fail(&e))?.into()
                    }
                    Converted::I64(shape, data) => {
                        TensorRef::from_array_view((shape.clone(), data.as_slice())).map_err(|e| fail(&e))?.into()
                    }
                    Converted::I32(shape, data) => {
                        TensorRef::from_array_view((shape.clone(), data.as_slice())).map_err(|e| fail(&e))?.into()
                    }
                },
            };
            values.push((name.to_string().into(), value));
        }
        let cpu_before = thread_cpu_time();
        let started = Instant::now();
        let result = self.session.run(values);
        let elapsed = started.elapsed();
        let cpu = thread_cpu_time().saturating_sub(cpu_before);
        let result = result.map_err(|e| ModelError::Run { model: self.name.clone(), message: e.to_string() })?;
        self.run_time += elapsed;
        self.run_cpu += cpu;
        self.runs += 1;
        let mut views = Vec::with_capacity(outputs.len());
        for name in outputs {
            let value = result.get(*name).ok_or_else(|| ModelError::Contract {
                model: self.name.clone(),
                message: format!("no output `{name}`"),
            })?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| ModelError::Contract {
                model: self.name.clone(),
                message: format!("output `{name}` is not f32: {e}"),
            })?;
            let shape = shape.iter().map(|d| usize::try_from(*d).unwrap_or(0)).collect();
            views.push(View { shape, data });
        }
        Ok(read(&views))
    }
}

/// CPU time the calling thread has used so far (zero where the platform has no per-thread clock). One
/// `clock_gettime` call: cheap enough to take around every session run.
pub fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid, writable timespec; the call only writes it.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0 {
            return Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0));
        }
    }
    Duration::ZERO
}

/// An input converted to the element type the graph declares.
enum Converted {
    Bool(Vec<usize>, Vec<bool>),
    I64(Vec<usize>, Vec<i64>),
    I32(Vec<usize>, Vec<i32>),
}

/// Whether an error from a run says the device ran out of memory (the batch is then halved and retried).
pub fn is_out_of_memory(error: &ModelError) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("out of memory")
        || text.contains("failed to allocate")
        || text.contains("bad_alloc")
        || text.contains("cudaerrormemoryallocation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_clock_counts_this_threads_work_only() {
        let start = thread_cpu_time();
        // Sleeping uses no CPU.
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time().saturating_sub(start);
        // Spinning does, however busy the machine: spin until the clock has moved 5 ms (a clock that never moves
        // fails after 10 s).
        let spin_start = Instant::now();
        let mut x = 0u64;
        while thread_cpu_time().saturating_sub(start + slept) < Duration::from_millis(5)
            && spin_start.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let spun = thread_cpu_time().saturating_sub(start + slept);
        assert!(slept < Duration::from_millis(10), "{slept:?} of CPU while sleeping");
        assert!(spun >= Duration::from_millis(5), "{spun:?} of CPU after spinning for {:?}", spin_start.elapsed());
    }

    #[test]
    fn devices_parse() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("cuda:1").unwrap(), Device::Cuda(1));
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        assert!(Device::parse("tpu:0").unwrap_err().to_string().contains("cuda:N"));
    }
}
