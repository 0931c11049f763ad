//! Checkpoints: a network's parameters, its momentum buffers and the trainer's state in one
//! [safetensors](https://huggingface.co/docs/safetensors) file.
//!
//! ## Why safetensors
//! A checkpoint is the one artefact of a training run that outlives this toolkit: it is read
//! back to resume, to evaluate, to pre-initialise a deeper network (the paper's scheme, see
//! [`crate::net::init::pre_initialise`]) and, often, by other tools. safetensors is a flat file (an
//! 8-byte header length, a JSON header naming every tensor's dtype, shape and byte range, then
//! the raw little-endian data) that PyTorch (`safetensors.torch.load_file`), Hugging Face tools
//! and NumPy read directly, with no code execution on load (unlike a pickled `.pt`). The tensors
//! keep the layout of torchvision's modules (`[out, in, k, k]` for a conv, `[out, in]` for an
//! FC layer; see [`crate::config::model`]), so [`to_torchvision`] only renames them.
//!
//! ## Layout
//! * every parameter under its project name (`conv1_1.weight`, ..., `fc8.bias`), float32;
//! * optionally every momentum buffer under `NAME.momentum` (the training graph's input name);
//! * header metadata (strings): `vgg.format` = `"1"`, `vgg.config` = the [`VggConfig`] as JSON
//!   (the checkpoint describes its own network, so nothing else is needed to load it), and
//!   optionally `vgg.state` = the trainer's state as JSON (epoch, step, learning rate, ...),
//!   `vgg.classes` = the class list (wnids, in label order) of the data the network was trained
//!   on ([`Checkpoint::save_with_classes`]; every checkpoint `vgg train` writes has one), and
//!   `vgg.crc32c` = a JSON object mapping every tensor's name to the CRC-32C of its stored
//!   bytes (every file this module writes has one).
//!
//! The header is written with its keys in a fixed order (metadata keys sorted, tensors in the
//! order given), so the same tensors and metadata give the same bytes in every process.
//!
//! ## Safety of the file
//! Writes are atomic: the file is written next to its destination under a temporary name,
//! flushed to disk (`fsync`), renamed over the destination and the directory is synced, so a
//! crash mid-save leaves the previous checkpoint intact, never a torn one. Reading maps the
//! file; because checkpoints are only ever replaced by rename, a mapped file is never modified
//! under the reader.
//!
//! Loading validates every tensor against the parameters the stored configuration implies
//! ([`parameters`]): a missing tensor, a wrong shape, a wrong dtype or an unknown extra tensor
//! is an error that names the tensor (and both shapes), rather than a crash or a silently
//! wrong network later. A tensor whose bytes do not match their stored CRC-32C (damage inside
//! the data, which the safetensors header cannot see) is [`CheckpointError::Checksum`] naming
//! the tensor. Files without checksums or without a class list (older checkpoints, tensor files
//! from other tools) still load; [`CheckpointInfo::notes`] says what could not be checked.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::{Dtype, SafeTensors, View};

use crate::config::model::{parameters, torchvision_name, ParamSpec, VggConfig, MOMENTUM};

/// Metadata key of the file format version.
pub const FORMAT_KEY: &str = "vgg.format";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: &str = "1";
/// Metadata key of the network configuration (JSON).
pub const CONFIG_KEY: &str = "vgg.config";
/// Metadata key of the trainer state (JSON).
pub const STATE_KEY: &str = "vgg.state";
/// Metadata key of the class list (JSON array of wnids, in label order).
pub const CLASSES_KEY: &str = "vgg.classes";
/// Metadata key of the per-tensor checksums (JSON object: tensor name -> CRC-32C of its bytes).
pub const CHECKSUMS_KEY: &str = "vgg.crc32c";

/// What a loaded file says beyond its tensors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The class list the network was trained on (wnids, in label order), if the file has one.
    pub classes: Option<Vec<String>>,
    /// Every tensor's bytes were checked against a stored CRC-32C.
    pub checksummed: bool,
}

impl CheckpointInfo {
    /// What could not be checked, one sentence each (empty for a checkpoint of this build).
    pub fn notes(&self, path: &Path) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.checksummed {
            notes.push(format!(
                "{}: no tensor checksums (an older checkpoint or another tool's file): damage \
                 inside its tensors cannot be detected",
                path.display()
            ));
        }
        if self.classes.is_none() {
            notes.push(format!(
                "{}: no class list (an older checkpoint or an import): only the number of \
                 classes can be checked against the data",
                path.display()
            ));
        }
        notes
    }
}

/// The network's class list differs from the data's: the labels would mean other classes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what}: the network was trained on other classes than {data} holds: {difference}; \
     labels would mean other classes (pass the class-mismatch flag to remap deliberately)"
)]
pub struct ClassMismatch {
    /// The checkpoint, in words.
    pub what: String,
    /// The data, in words.
    pub data: String,
    /// The first difference, in words.
    pub difference: String,
}

/// Compares a checkpoint's class list (`None`: it has none, nothing to compare) with the
/// data's (wnids in label order), naming the first difference.
pub fn check_classes(
    what: &str,
    stored: Option<&[String]>,
    data_name: &str,
    data: &[String],
) -> Result<(), ClassMismatch> {
    let Some(stored) = stored else {
        return Ok(());
    };
    let difference = match stored.iter().zip(data).position(|(a, b)| a != b) {
        Some(i) => format!(
            "label {i} is `{}` in the network, `{}` in the data",
            stored[i], data[i]
        ),
        None if stored.len() != data.len() => format!(
            "the network has {} classes, the data {}",
            stored.len(),
            data.len()
        ),
        None => return Ok(()),
    };
    Err(ClassMismatch {
        what: what.to_string(),
        data: data_name.to_string(),
        difference,
    })
}

/// One float32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// A tensor of zeros.
    pub fn zeros(name: impl Into<String>, shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        NamedTensor {
            name: name.into(),
            shape,
            data: vec![0.0; n],
        }
    }

    /// The number of elements its shape implies.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A network's training state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The network; stored in the metadata under `vgg.config` as JSON.
    pub config: VggConfig,
    /// Exactly [`parameters`]`(&config)`: same order, names and shapes.
    pub params: Vec<NamedTensor>,
    /// The momentum buffers, in the order of `params`, each named `NAME.momentum`.
    pub momenta: Option<Vec<NamedTensor>>,
    /// The trainer's state; stored in the metadata under `vgg.state` as JSON.
    pub state: Option<serde_json::Value>,
}

/// Why a checkpoint or tensor file could not be read, written or used. `path` is empty for
/// tensors that did not come from a file (e.g. [`from_torchvision`] on tensors in memory).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}{source}{}", at(path), disk_full(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{message}", at(path))]
    Format { path: PathBuf, message: String },
    #[error("{}tensor `{name}` is missing", at(path))]
    Missing { path: PathBuf, name: String },
    #[error(
        "{}tensor `{name}` has shape {found:?}, expected {expected:?}",
        at(path)
    )]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{}tensor `{name}` is {found}, expected {expected}", at(path))]
    Dtype {
        path: PathBuf,
        name: String,
        expected: String,
        found: String,
    },
    #[error("{}{message}", at(path))]
    Config { path: PathBuf, message: String },
    /// A tensor of one network cannot be copied into another (pre-initialisation).
    #[error("{0}")]
    Mismatch(Box<TensorMismatch>),
    /// A tensor's bytes differ from the checksum stored when the file was written.
    #[error(
        "{}tensor `{name}` is damaged: its data has CRC-32C {found:08x}, the file recorded \
         {expected:08x} when it was written",
        at(path)
    )]
    Checksum {
        path: PathBuf,
        name: String,
        expected: u32,
        found: u32,
    },
}

/// A source tensor whose shape differs from the target tensor it should be copied into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot copy `{from}` {from_shape:?} of {from_config} into `{to}` {to_shape:?} of {to_config}: the shapes differ")]
pub struct TensorMismatch {
    pub from_config: String,
    pub from: String,
    pub from_shape: Vec<usize>,
    pub to_config: String,
    pub to: String,
    pub to_shape: Vec<usize>,
}

/// What a full disk means for a checkpoint: the previous one is still whole (checkpoints are
/// written beside it and renamed over it).
fn disk_full(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        " (the disk is full: the previous checkpoint is kept whole; free space, then --resume)"
    } else {
        ""
    }
}

fn at(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", path.display())
    }
}

/// The shape of a parameter as `usize`s.
pub(crate) fn spec_shape(spec: &ParamSpec) -> Vec<usize> {
    spec.shape.iter().map(|&d| d as usize).collect()
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically (temporary file in the same directory,
    /// fsync, rename, directory sync). The tensors are checked against the configuration
    /// first, so a file that [`Checkpoint::load`] would refuse is never written.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        self.save_with_classes(path, None)
    }

    /// [`Checkpoint::save`], also storing the class list (wnids in label order) of the data
    /// the network was trained on under [`CLASSES_KEY`].
    pub fn save_with_classes(
        &self,
        path: &Path,
        classes: Option<&[String]>,
    ) -> Result<(), CheckpointError> {
        self.validate(path)?;
        let mut metadata = HashMap::new();
        if let Some(classes) = classes {
            metadata.insert(
                CLASSES_KEY.to_string(),
                serde_json::to_string(classes).expect("strings serialise"),
            );
        }
        metadata.insert(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string());
        metadata.insert(
            CONFIG_KEY.to_string(),
            serde_json::to_string(&self.config).map_err(|e| CheckpointError::Config {
                path: path.to_path_buf(),
                message: format!("cannot encode the configuration: {e}"),
            })?,
        );
        if let Some(state) = &self.state {
            metadata.insert(
                STATE_KEY.to_string(),
                serde_json::to_string(state).map_err(|e| CheckpointError::Format {
                    path: path.to_path_buf(),
                    message: format!("cannot encode the trainer state: {e}"),
                })?,
            );
        }
        let all = self
            .params
            .iter()
            .chain(self.momenta.iter().flatten())
            .map(|t| (t.name.as_str(), F32View::of(t)));
        write_views(path, all, metadata)
    }

    /// Reads and validates a checkpoint: the configuration from its metadata, then every
    /// parameter (and momentum buffer, if any is present) by name, dtype (float32) and shape.
    /// Tensors the configuration does not know are an error naming them.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        Ok(Self::load_with_info(path)?.0)
    }

    /// [`Checkpoint::load`] with what the file says beyond its tensors (class list, whether
    /// checksums were checked). Every tensor with a stored checksum is checked.
    pub fn load_with_info(path: &Path) -> Result<(Checkpoint, CheckpointInfo), CheckpointError> {
        let map = map_file(path)?;
        let st = parse(path, &map)?;
        let metadata = read_metadata(path, &map)?;
        let checksummed = verify_checksums(path, &st, &metadata)?;
        let format_err = |message: String| CheckpointError::Format {
            path: path.to_path_buf(),
            message,
        };
        match metadata.get(FORMAT_KEY).map(String::as_str) {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(format_err(format!(
                    "checkpoint format {other}; this build reads format {FORMAT_VERSION}"
                )))
            }
            None => {
                return Err(format_err(format!(
                    "not a vgg checkpoint (no `{FORMAT_KEY}` in its metadata); \
                     a torchvision state dict is converted with `vgg weights from-torchvision`"
                )))
            }
        }
        let config_json = metadata
            .get(CONFIG_KEY)
            .ok_or_else(|| CheckpointError::Config {
                path: path.to_path_buf(),
                message: format!("no `{CONFIG_KEY}` in the metadata"),
            })?;
        let config: VggConfig =
            serde_json::from_str(config_json).map_err(|e| CheckpointError::Config {
                path: path.to_path_buf(),
                message: format!("`{CONFIG_KEY}` is not a valid configuration: {e}"),
            })?;
        let state = match metadata.get(STATE_KEY) {
            Some(s) => Some(
                serde_json::from_str(s)
                    .map_err(|e| format_err(format!("`{STATE_KEY}` is not valid JSON: {e}")))?,
            ),
            None => None,
        };

        let specs = parameters(&config);
        let names: BTreeSet<&str> = st.iter().map(|(n, _)| n).collect();
        let mut expected: BTreeSet<String> = BTreeSet::new();
        let mut params = Vec::with_capacity(specs.len());
        for spec in &specs {
            params.push(expect(path, &st, &spec.name, &spec_shape(spec))?);
            expected.insert(spec.name.clone());
        }
        let has_momenta = specs
            .iter()
            .any(|s| names.contains(format!("{}{MOMENTUM}", s.name).as_str()));
        let momenta = if has_momenta {
            let mut m = Vec::with_capacity(specs.len());
            for spec in &specs {
                let name = format!("{}{MOMENTUM}", spec.name);
                m.push(expect(path, &st, &name, &spec_shape(spec))?);
                expected.insert(name);
            }
            Some(m)
        } else {
            None
        };
        let extra: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !expected.contains(*n))
            .collect();
        if !extra.is_empty() {
            return Err(format_err(format!(
                "tensors that network {} does not have: {}",
                config.name,
                list(&extra)
            )));
        }
        let classes = match metadata.get(CLASSES_KEY) {
            Some(s) => Some(serde_json::from_str::<Vec<String>>(s).map_err(|e| {
                format_err(format!("`{CLASSES_KEY}` is not a list of class names: {e}"))
            })?),
            None => None,
        };
        Ok((
            Checkpoint {
                config,
                params,
                momenta,
                state,
            },
            CheckpointInfo {
                classes,
                checksummed,
            },
        ))
    }

    /// The parameter called `name` (`conv1_1.weight`, ...).
    pub fn param(&self, name: &str) -> Option<&NamedTensor> {
        self.params.iter().find(|t| t.name == name)
    }

    /// Checks params (and momenta) against the configuration before a save.
    fn validate(&self, path: &Path) -> Result<(), CheckpointError> {
        check_layout(path, &self.config, &self.params, "")?;
        if let Some(m) = &self.momenta {
            check_layout(path, &self.config, m, MOMENTUM)?;
        }
        Ok(())
    }
}

/// Checks that `tensors` are exactly `config`'s parameters (names with `suffix`, e.g.
/// [`MOMENTUM`] for momentum buffers) in [`parameters`] order, each with its shape and as many
/// values as the shape needs. The one parameter check of the toolkit: before a checkpoint is
/// written, and before a network is evaluated. `path` names the file in errors (empty: none).
pub fn check_layout(
    path: &Path,
    config: &VggConfig,
    tensors: &[NamedTensor],
    suffix: &str,
) -> Result<(), CheckpointError> {
    let specs = parameters(config);
    for (i, spec) in specs.iter().enumerate() {
        let name = format!("{}{suffix}", spec.name);
        let Some(t) = tensors.get(i).filter(|t| t.name == name) else {
            return Err(CheckpointError::Missing {
                path: path.to_path_buf(),
                name,
            });
        };
        check_tensor(path, t, &spec_shape(spec))?;
    }
    if tensors.len() > specs.len() {
        let extra: Vec<&str> = tensors[specs.len()..]
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        return Err(CheckpointError::Format {
            path: path.to_path_buf(),
            message: format!(
                "tensors that network {} does not have: {}",
                config.name,
                list(&extra)
            ),
        });
    }
    Ok(())
}

/// Shape and element count of one in-memory tensor.
fn check_tensor(path: &Path, t: &NamedTensor, expected: &[usize]) -> Result<(), CheckpointError> {
    if t.shape != expected {
        return Err(CheckpointError::Shape {
            path: path.to_path_buf(),
            name: t.name.clone(),
            expected: expected.to_vec(),
            found: t.shape.clone(),
        });
    }
    check_len(path, t)
}

fn check_len(path: &Path, t: &NamedTensor) -> Result<(), CheckpointError> {
    if t.data.len() != t.numel() {
        return Err(CheckpointError::Format {
            path: path.to_path_buf(),
            message: format!(
                "tensor `{}` holds {} values but its shape {:?} needs {}",
                t.name,
                t.data.len(),
                t.shape,
                t.numel()
            ),
        });
    }
    Ok(())
}

/// One required float32 tensor of a checkpoint.
fn expect(
    path: &Path,
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<NamedTensor, CheckpointError> {
    let view = st.tensor(name).map_err(|_| CheckpointError::Missing {
        path: path.to_path_buf(),
        name: name.to_string(),
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(CheckpointError::Dtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: format!("{:?}", Dtype::F32),
            found: format!("{:?}", view.dtype()),
        });
    }
    if view.shape() != shape {
        return Err(CheckpointError::Shape {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: shape.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    decode(path, name, &view)
}

/// A comma-separated list, shortened after 20 names.
fn list(names: &[&str]) -> String {
    const SHOWN: usize = 20;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Reads every tensor of a safetensors file (a checkpoint, or e.g. torchvision weights a user
/// converted with `safetensors.torch.save_file(model.state_dict(), ...)`), sorted by name,
/// with the file's metadata (empty if it has none). Float16, bfloat16 and float64 tensors are
/// converted to float32; other dtypes are an error naming the tensor.
pub fn read_tensors(
    path: &Path,
) -> Result<(Vec<NamedTensor>, HashMap<String, String>), CheckpointError> {
    let map = map_file(path)?;
    let st = parse(path, &map)?;
    let metadata = read_metadata(path, &map)?;
    verify_checksums(path, &st, &metadata)?;
    let mut views: Vec<(&str, TensorView<'_>)> = st.iter().collect();
    views.sort_by(|a, b| a.0.cmp(b.0));
    let tensors = views
        .into_iter()
        .map(|(name, view)| decode(path, name, &view))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((tensors, metadata))
}

/// Writes `tensors` (float32) and `metadata` to a safetensors file at `path`, atomically,
/// with every tensor's checksum under [`CHECKSUMS_KEY`] (which [`read_tensors`] checks).
/// Names must be unique and every tensor's data must fill its shape.
pub fn write_tensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let mut seen = BTreeSet::new();
    for t in tensors {
        check_len(path, t)?;
        if !seen.insert(t.name.as_str()) {
            return Err(CheckpointError::Format {
                path: path.to_path_buf(),
                message: format!("tensor `{}` appears twice", t.name),
            });
        }
    }
    write_views(
        path,
        tensors.iter().map(|t| (t.name.as_str(), F32View::of(t))),
        metadata,
    )
}

/// Renames the parameters of `ck` to torchvision's `state_dict` keys (`features.N.weight`,
/// `classifier.N.bias`, ...), data unchanged; the result can be written with
/// [`write_tensors`] and loaded into `torchvision.models.vgg11()` etc. (after
/// `safetensors.torch.load_file`) when the configuration is one of the paper's at 1000 classes.
/// Tensors whose name is not a parameter of the configuration keep their name (a checkpoint
/// from [`Checkpoint::load`] has none).
pub fn to_torchvision(ck: &Checkpoint) -> Vec<NamedTensor> {
    let specs = parameters(&ck.config);
    let by_name: HashMap<&str, &ParamSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
    ck.params
        .iter()
        .map(|t| NamedTensor {
            name: match by_name.get(t.name.as_str()) {
                Some(spec) => torchvision_name(&ck.config, spec),
                None => t.name.clone(),
            },
            shape: t.shape.clone(),
            data: t.data.clone(),
        })
        .collect()
}

/// The parameters of `config` from torchvision-named tensors (`features.N.weight`, ...), in
/// [`parameters`] order with project names. Every expected key must be present with the
/// expected shape. A batch-norm state dict (`vgg16_bn`: `running_mean`, `running_var`,
/// `num_batches_tracked`) is refused with its own message, other extra keys with their list.
pub fn from_torchvision(
    config: &VggConfig,
    tensors: &[NamedTensor],
) -> Result<Vec<NamedTensor>, CheckpointError> {
    let none = PathBuf::new;
    let by_name: HashMap<&str, &NamedTensor> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let bn: Vec<&str> = tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| {
            n.ends_with(".running_mean")
                || n.ends_with(".running_var")
                || n.ends_with(".num_batches_tracked")
        })
        .collect();
    if !bn.is_empty() {
        return Err(CheckpointError::Format {
            path: none(),
            message: format!(
                "these are the weights of a batch-norm VGG (torchvision's `vgg*_bn`, tensors \
                 such as {}); batch-norm VGG variants are not the paper's networks and have \
                 different layers",
                list(&bn[..bn.len().min(3)])
            ),
        });
    }
    let specs = parameters(config);
    let mut expected = BTreeSet::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in &specs {
        let key = torchvision_name(config, spec);
        let Some(t) = by_name.get(key.as_str()) else {
            return Err(CheckpointError::Missing {
                path: none(),
                name: key,
            });
        };
        let shape = spec_shape(spec);
        if t.shape != shape {
            return Err(CheckpointError::Shape {
                path: none(),
                name: key,
                expected: shape,
                found: t.shape.clone(),
            });
        }
        check_len(&none(), t)?;
        out.push(NamedTensor {
            name: spec.name.clone(),
            shape,
            data: t.data.clone(),
        });
        expected.insert(key);
    }
    let mut extra: Vec<&str> = tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !expected.contains(*n))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(CheckpointError::Format {
            path: none(),
            message: format!(
                "tensors that network {} does not have: {}",
                config.name,
                list(&extra)
            ),
        });
    }
    Ok(out)
}

// ----------------------------------------------------------------------------------------------
// File access

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn map_file(path: &Path) -> Result<Mmap, CheckpointError> {
    let file = File::open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    if meta.is_dir() {
        return Err(CheckpointError::Format {
            path: path.to_path_buf(),
            message: "is a folder; a checkpoint file (.safetensors) is expected, such as \
                      RUN_DIR/last.safetensors or RUN_DIR/best.safetensors"
                .to_string(),
        });
    }
    let len = meta.len();
    if len < 8 {
        return Err(CheckpointError::Format {
            path: path.to_path_buf(),
            message: format!("{len} bytes is too short for a safetensors file"),
        });
    }
    // SAFETY: checkpoints and tensor files are only ever replaced by rename (see
    // `write_views`), never modified in place, so the mapped bytes do not change under us.
    unsafe { Mmap::map(&file) }.map_err(io(path))
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, CheckpointError> {
    SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file (truncated or damaged?): {e}"),
    })
}

fn read_metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>, CheckpointError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file (truncated or damaged?): {e}"),
    })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Checks every tensor against the checksums in `metadata`, if it has any; returns whether it
/// had them. A checksum list that leaves out a tensor, or names one the file lacks, is damage
/// too.
fn verify_checksums(
    path: &Path,
    st: &SafeTensors<'_>,
    metadata: &HashMap<String, String>,
) -> Result<bool, CheckpointError> {
    let Some(json) = metadata.get(CHECKSUMS_KEY) else {
        return Ok(false);
    };
    let format_err = |message: String| CheckpointError::Format {
        path: path.to_path_buf(),
        message,
    };
    let sums: BTreeMap<String, u32> = serde_json::from_str(json)
        .map_err(|e| format_err(format!("`{CHECKSUMS_KEY}` is not a checksum list: {e}")))?;
    let mut names = st.names();
    names.sort_unstable();
    for name in names {
        let view = st.tensor(name).map_err(|e| format_err(e.to_string()))?;
        let Some(&expected) = sums.get(name) else {
            return Err(format_err(format!(
                "tensor `{name}` has no checksum in `{CHECKSUMS_KEY}` (the header is damaged)"
            )));
        };
        let found = crc32c::crc32c(view.data());
        if found != expected {
            return Err(CheckpointError::Checksum {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected,
                found,
            });
        }
    }
    if let Some(name) = sums.keys().find(|n| st.tensor(n).is_err()) {
        return Err(format_err(format!(
            "`{CHECKSUMS_KEY}` names tensor `{name}`, which the file does not have"
        )));
    }
    Ok(true)
}

/// The safetensors header with a fixed key order: `__metadata__` first with its keys sorted,
/// then the tensors in file order (the crate's own header keeps the metadata in a `HashMap`,
/// whose order changes from process to process).
struct Header<'a> {
    metadata: BTreeMap<&'a str, &'a str>,
    tensors: &'a [(String, TensorInfo)],
}

impl serde::Serialize for Header<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.tensors.len() + 1))?;
        map.serialize_entry("__metadata__", &self.metadata)?;
        for (name, info) in self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// A tensor's data as float32, converting the other float dtypes.
fn decode(path: &Path, name: &str, view: &TensorView<'_>) -> Result<NamedTensor, CheckpointError> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        // Both widen exactly: every f16 and every bf16 is an f32.
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => {
            return Err(CheckpointError::Dtype {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: "a float tensor (F32, F16, BF16 or F64)".into(),
                found: format!("{other:?}"),
            })
        }
    };
    Ok(NamedTensor {
        name: name.to_string(),
        shape: view.shape().to_vec(),
        data,
    })
}

/// A borrowed float32 tensor as safetensors sees it.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl<'a> F32View<'a> {
    fn of(t: &'a NamedTensor) -> Self {
        F32View {
            shape: &t.shape,
            data: &t.data,
        }
    }
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        #[cfg(target_endian = "little")]
        {
            // On little-endian targets the in-memory bytes are the ones safetensors stores.
            Cow::Borrowed(bytemuck::cast_slice(self.data))
        }
        #[cfg(not(target_endian = "little"))]
        {
            Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    }

    fn data_len(&self) -> usize {
        std::mem::size_of_val(self.data)
    }
}

/// Writes a safetensors file atomically ([`crate::util::fs::write_atomic_with`]): the header is
/// built by safetensors' own [`Metadata`] (tensors in the order given, contiguous), then the
/// tensor bytes stream straight from the parameter buffers to the temporary file, with no copy of
/// the whole file in memory.
fn write_views<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (&'a str, F32View<'a>)>,
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let views: Vec<(&str, F32View<'_>)> = tensors.collect();
    let mut metadata = metadata;
    let sums: BTreeMap<&str, u32> = views
        .iter()
        .map(|(name, v)| (*name, crc32c::crc32c(&v.data())))
        .collect();
    metadata.insert(
        CHECKSUMS_KEY.to_string(),
        serde_json::to_string(&sums).expect("numbers serialise"),
    );
    let mut infos = Vec::with_capacity(views.len());
    let mut offset = 0usize;
    for (name, v) in &views {
        let end = offset + v.data_len();
        infos.push((
            name.to_string(),
            TensorInfo {
                dtype: Dtype::F32,
                shape: v.shape.to_vec(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let format_error = |message: String| CheckpointError::Format {
        path: path.to_path_buf(),
        message,
    };
    // The crate's own check of the layout (offsets, shapes against byte counts).
    Metadata::new(None, infos.clone())
        .map_err(|e| format_error(format!("cannot serialise: {e}")))?;
    let header = Header {
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        tensors: &infos,
    };
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| format_error(format!("cannot serialise the header: {e}")))?;
    // The format pads the JSON header with spaces so the tensor data starts 8-byte aligned.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    crate::util::fs::write_atomic_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (_, v) in &views {
            w.write_all(&v.data())?;
        }
        Ok(())
    })
    .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(config: &str) -> VggConfig {
        VggConfig::tiny(config)
    }

    /// Parameters with distinct, awkward values (negative zero, subnormals, infinities, NaN).
    fn filled(config: &VggConfig, salt: u32) -> Vec<NamedTensor> {
        parameters(config)
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut t = NamedTensor::zeros(s.name.clone(), spec_shape(s));
                for (j, x) in t.data.iter_mut().enumerate() {
                    *x = ((i * 7919 + j) as f32 * 0.618 + salt as f32).sin();
                }
                t
            })
            .collect()
    }

    fn checkpoint() -> Checkpoint {
        let config = small("A");
        let mut params = filled(&config, 0);
        params[0].data[..5].copy_from_slice(&[
            -0.0,
            f32::from_bits(1),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7fc0_1234),
        ]);
        let momenta = filled(&config, 1)
            .into_iter()
            .map(|mut t| {
                t.name.push_str(MOMENTUM);
                t
            })
            .collect();
        Checkpoint {
            config,
            params,
            momenta: Some(momenta),
            state: Some(serde_json::json!({"epoch": 3, "step": 1234, "lr": 0.001})),
        }
    }

    fn bits(ts: &[NamedTensor]) -> Vec<(String, Vec<usize>, Vec<u32>)> {
        ts.iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.shape.clone(),
                    t.data.iter().map(|x| x.to_bits()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn save_load_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs/a/epoch-3.safetensors");
        let ck = checkpoint();
        ck.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back.config, ck.config);
        assert_eq!(back.state, ck.state);
        assert_eq!(bits(&back.params), bits(&ck.params));
        assert_eq!(
            bits(back.momenta.as_ref().unwrap()),
            bits(ck.momenta.as_ref().unwrap())
        );
        assert_eq!(
            back.param("fc8.bias").unwrap().shape,
            vec![ck.config.classes as usize]
        );
        // No temporary file is left behind, and a second save replaces the first.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
        let plain = Checkpoint {
            momenta: None,
            state: None,
            ..ck.clone()
        };
        plain.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert!(back.momenta.is_none() && back.state.is_none());
        // The file is ordinary safetensors with the documented metadata.
        let (tensors, meta) = read_tensors(&path).unwrap();
        assert_eq!(meta[FORMAT_KEY], FORMAT_VERSION);
        assert!(meta[CONFIG_KEY].contains("\"blocks\""));
        assert_eq!(tensors.len(), ck.params.len());
        assert!(tensors.windows(2).all(|w| w[0].name < w[1].name));
    }

    fn metadata_of(ck: &Checkpoint) -> HashMap<String, String> {
        HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT_VERSION.to_string()),
            (
                CONFIG_KEY.to_string(),
                serde_json::to_string(&ck.config).unwrap(),
            ),
        ])
    }

    #[test]
    fn damaged_and_wrong_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint();
        let good = dir.path().join("good.safetensors");
        ck.save(&good).unwrap();

        // Truncated.
        let bytes = fs::read(&good).unwrap();
        let cut = dir.path().join("cut.safetensors");
        fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let e = Checkpoint::load(&cut).unwrap_err();
        assert!(matches!(e, CheckpointError::Format { .. }), "{e}");
        assert!(e.to_string().contains("cut.safetensors"), "{e}");
        fs::write(&cut, &bytes[..4]).unwrap();
        assert!(matches!(
            Checkpoint::load(&cut).unwrap_err(),
            CheckpointError::Format { .. }
        ));
        assert!(matches!(
            Checkpoint::load(&dir.path().join("absent")).unwrap_err(),
            CheckpointError::Io { .. }
        ));

        // A wrong shape.
        let mut params = ck.params.clone();
        params[2] = NamedTensor::zeros("conv2_1.weight", vec![16, 4, 3, 3]);
        let bad = dir.path().join("bad.safetensors");
        write_tensors(&bad, &params, metadata_of(&ck)).unwrap();
        match Checkpoint::load(&bad).unwrap_err() {
            CheckpointError::Shape {
                name,
                expected,
                found,
                ..
            } => {
                assert_eq!(name, "conv2_1.weight");
                assert_eq!(expected, vec![16, 8, 3, 3]);
                assert_eq!(found, vec![16, 4, 3, 3]);
            }
            e => panic!("{e}"),
        }

        // A missing tensor.
        let params: Vec<_> = ck
            .params
            .iter()
            .filter(|t| t.name != "fc7.bias")
            .cloned()
            .collect();
        write_tensors(&bad, &params, metadata_of(&ck)).unwrap();
        let e = Checkpoint::load(&bad).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Missing { name, .. } if name == "fc7.bias"),
            "{e}"
        );
        assert!(e.to_string().contains("`fc7.bias` is missing"), "{e}");

        // Some momenta but not all.
        let mut params = ck.params.clone();
        params.push(NamedTensor::zeros("fc8.bias.momentum", vec![10]));
        write_tensors(&bad, &params, metadata_of(&ck)).unwrap();
        let e = Checkpoint::load(&bad).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Missing { name, .. } if name == "conv1_1.weight.momentum"),
            "{e}"
        );

        // An unknown extra tensor.
        let mut params = ck.params.clone();
        params.push(NamedTensor::zeros("fc9.weight", vec![2, 2]));
        write_tensors(&bad, &params, metadata_of(&ck)).unwrap();
        let e = Checkpoint::load(&bad).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Format { message, .. } if message.contains("`fc9.weight`")),
            "{e}"
        );

        // Not a checkpoint, or an unreadable configuration.
        write_tensors(&bad, &ck.params, HashMap::new()).unwrap();
        assert!(matches!(
            Checkpoint::load(&bad).unwrap_err(),
            CheckpointError::Format { .. }
        ));
        let mut meta = metadata_of(&ck);
        meta.insert(CONFIG_KEY.into(), "{\"name\": 1}".into());
        write_tensors(&bad, &ck.params, meta).unwrap();
        assert!(matches!(
            Checkpoint::load(&bad).unwrap_err(),
            CheckpointError::Config { .. }
        ));

        // A half-precision parameter: readable as tensors, refused as a checkpoint.
        let half: Vec<u8> = vec![0; 10 * 2];
        let mut entries: Vec<(&str, TensorView<'_>)> = Vec::new();
        let f32s: Vec<Vec<u8>> = ck
            .params
            .iter()
            .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        for (t, b) in ck.params.iter().zip(&f32s) {
            if t.name == "fc8.bias" {
                entries.push((
                    &t.name,
                    TensorView::new(Dtype::F16, vec![10], &half).unwrap(),
                ));
            } else {
                entries.push((
                    &t.name,
                    TensorView::new(Dtype::F32, t.shape.clone(), b).unwrap(),
                ));
            }
        }
        fs::write(
            &bad,
            safetensors::serialize(entries, Some(metadata_of(&ck))).unwrap(),
        )
        .unwrap();
        let e = Checkpoint::load(&bad).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Dtype { name, found, .. } if name == "fc8.bias" && found == "F16"),
            "{e}"
        );
        assert!(read_tensors(&bad).is_ok());

        // A checkpoint that does not match its own configuration is not written.
        let mut wrong = ck.clone();
        wrong.params[0].shape = vec![8, 3, 9];
        let e = wrong
            .save(&dir.path().join("never.safetensors"))
            .unwrap_err();
        assert!(matches!(e, CheckpointError::Shape { .. }), "{e}");
        assert!(!dir.path().join("never.safetensors").exists());
    }

    #[test]
    fn the_same_checkpoint_is_the_same_bytes_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint();
        let classes: Vec<String> = (0..10).map(|i| format!("n{i:08}")).collect();
        let first = dir.path().join("0.safetensors");
        ck.save_with_classes(&first, Some(&classes)).unwrap();
        let want = fs::read(&first).unwrap();
        // Each save builds its metadata map anew (its own hash order): the bytes do not follow.
        for i in 1..16 {
            let path = dir.path().join(format!("{i}.safetensors"));
            ck.save_with_classes(&path, Some(&classes)).unwrap();
            assert!(fs::read(&path).unwrap() == want, "save {i} differs");
        }
    }

    #[test]
    fn damage_inside_a_tensor_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint();
        let path = dir.path().join("ck.safetensors");
        ck.save(&path).unwrap();
        let (_, info) = Checkpoint::load_with_info(&path).unwrap();
        assert!(info.checksummed);
        // Flip one bit in the data of `conv2_1.weight` (the header stays valid).
        let mut bytes = fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let start = header["conv2_1.weight"]["data_offsets"][0]
            .as_u64()
            .unwrap() as usize;
        bytes[8 + n + start + 5] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let e = Checkpoint::load(&path).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Checksum { name, .. } if name == "conv2_1.weight"),
            "{e}"
        );
        assert!(e.to_string().contains("`conv2_1.weight` is damaged"), "{e}");
        assert!(matches!(
            read_tensors(&path).unwrap_err(),
            CheckpointError::Checksum { .. }
        ));
        // Files without checksums (older checkpoints, other tools) load, with a note.
        write_views(
            &path,
            ck.params.iter().map(|t| (t.name.as_str(), F32View::of(t))),
            metadata_of(&ck),
        )
        .unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header["__metadata__"]
            .as_object_mut()
            .unwrap()
            .remove(CHECKSUMS_KEY);
        let mut h = serde_json::to_vec(&header).unwrap();
        h.resize(n, b' ');
        bytes[8..8 + n].copy_from_slice(&h);
        fs::write(&path, &bytes).unwrap();
        let (back, info) = Checkpoint::load_with_info(&path).unwrap();
        assert_eq!(bits(&back.params), bits(&ck.params));
        assert_eq!(info, CheckpointInfo::default());
        let notes = info.notes(&path);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("no tensor checksums"), "{notes:?}");
        assert!(notes[1].contains("no class list"), "{notes:?}");
    }

    #[test]
    fn class_lists_are_stored_and_compared_naming_the_first_difference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        let classes: Vec<String> = ["n01", "n02", "n03"].map(String::from).to_vec();
        checkpoint()
            .save_with_classes(&path, Some(&classes))
            .unwrap();
        let (_, info) = Checkpoint::load_with_info(&path).unwrap();
        assert_eq!(info.classes.as_deref(), Some(&classes[..]));
        assert!(info.notes(&path).is_empty());
        assert_eq!(check_classes("ck", Some(&classes), "val", &classes), Ok(()));
        assert_eq!(check_classes("ck", None, "val", &classes), Ok(()));
        let other: Vec<String> = ["n01", "n09", "n03"].map(String::from).to_vec();
        let e = check_classes("ck", Some(&classes), "val", &other).unwrap_err();
        assert_eq!(
            e.difference,
            "label 1 is `n02` in the network, `n09` in the data"
        );
        let fewer = &classes[..2];
        let e = check_classes("ck", Some(&classes), "val", fewer).unwrap_err();
        assert_eq!(e.difference, "the network has 3 classes, the data 2");
    }

    #[test]
    fn read_tensors_converts_other_float_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("half.safetensors");
        // 1.0, -2.0, 2^-24 (smallest subnormal), 65504 (max), inf in f16.
        let f16: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7bff, 0x7c00]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let bf16: Vec<u8> = [0x3f80u16, 0xc040]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let f64s: Vec<u8> = [0.1f64, -3.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let ints: Vec<u8> = [1i64].iter().flat_map(|x| x.to_le_bytes()).collect();
        let entries = vec![
            ("h", TensorView::new(Dtype::F16, vec![5], &f16).unwrap()),
            (
                "b",
                TensorView::new(Dtype::BF16, vec![1, 2], &bf16).unwrap(),
            ),
            ("d", TensorView::new(Dtype::F64, vec![2], &f64s).unwrap()),
        ];
        fs::write(&path, safetensors::serialize(entries, None).unwrap()).unwrap();
        let (t, meta) = read_tensors(&path).unwrap();
        assert!(meta.is_empty());
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["b", "d", "h"]
        );
        assert_eq!(t[0].data, [1.0, -3.0]);
        assert_eq!(t[0].shape, [1, 2]);
        assert_eq!(t[1].data, [0.1f32, -3.5]);
        assert_eq!(
            t[2].data,
            [1.0, -2.0, 2f32.powi(-24), 65504.0, f32::INFINITY]
        );

        let entries = vec![("n", TensorView::new(Dtype::I64, vec![1], &ints).unwrap())];
        fs::write(&path, safetensors::serialize(entries, None).unwrap()).unwrap();
        let e = read_tensors(&path).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Dtype { name, found, .. } if name == "n" && found == "I64"),
            "{e}"
        );
    }

    /// The IEEE 754 widening from half precision, written out bit by bit: the reference the
    /// `half` crate's conversion in [`decode`] is checked against.
    fn f16_bits_to_f32_reference(h: u16) -> f32 {
        let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
        let exp = u32::from((h >> 10) & 0x1f);
        let mant = u32::from(h & 0x3ff);
        match exp {
            // zero or subnormal: mant * 2^-24
            0 => sign * mant as f32 * (1.0 / 16_777_216.0),
            0x1f if mant == 0 => sign * f32::INFINITY,
            0x1f => f32::NAN,
            _ => f32::from_bits(u32::from(h & 0x8000) << 16 | ((exp + 112) << 23) | (mant << 13)),
        }
    }

    #[test]
    fn half_precision_decodes_exactly_for_every_bit_pattern() {
        let halves: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let path = Path::new("every.safetensors");
        let count = 1usize << 16;
        let f16s = decode(
            path,
            "h",
            &TensorView::new(Dtype::F16, vec![count], &halves).unwrap(),
        )
        .unwrap();
        let bf16s = decode(
            path,
            "b",
            &TensorView::new(Dtype::BF16, vec![count], &halves).unwrap(),
        )
        .unwrap();
        for (h, (&got_f16, &got_bf16)) in (0..=u16::MAX).zip(f16s.data.iter().zip(&bf16s.data)) {
            let want = f16_bits_to_f32_reference(h);
            if want.is_nan() {
                assert!(got_f16.is_nan(), "f16 {h:#06x}: {got_f16}");
            } else {
                assert_eq!(got_f16.to_bits(), want.to_bits(), "f16 {h:#06x}");
            }
            // bf16 is the top half of an f32.
            let want = f32::from_bits(u32::from(h) << 16);
            if want.is_nan() {
                assert!(got_bf16.is_nan(), "bf16 {h:#06x}: {got_bf16}");
            } else {
                assert_eq!(got_bf16.to_bits(), want.to_bits(), "bf16 {h:#06x}");
            }
        }
        // The values `read_tensors_converts_other_float_dtypes` checks through a file.
        let at = |h: u16| f16s.data[usize::from(h)];
        assert_eq!(
            [at(0x3c00), at(0xc000), at(0x0001), at(0x7bff), at(0x7c00)],
            [1.0, -2.0, 2f32.powi(-24), 65504.0, f32::INFINITY]
        );
        assert_eq!(at(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn f32_view_bytes_are_the_little_endian_values() {
        let t = NamedTensor {
            name: "w".into(),
            shape: vec![2, 2],
            data: vec![1.0, -2.5, f32::MIN_POSITIVE, f32::NAN],
        };
        let view = F32View::of(&t);
        let want: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(&*view.data(), &want[..]);
        assert_eq!(view.data_len(), 16);
    }

    #[test]
    fn torchvision_names_round_trip() {
        let ck = checkpoint();
        let tv = to_torchvision(&ck);
        let names: Vec<&str> = tv.iter().map(|t| t.name.as_str()).collect();
        // A: conv, ReLU, pool | conv, ReLU, pool | conv, ReLU, conv, ReLU, pool | ...
        assert_eq!(names[0], "features.0.weight");
        assert_eq!(names[2], "features.3.weight");
        assert_eq!(names[4], "features.6.weight");
        assert_eq!(names[6], "features.8.weight");
        assert_eq!(
            &names[names.len() - 6..],
            [
                "classifier.0.weight",
                "classifier.0.bias",
                "classifier.3.weight",
                "classifier.3.bias",
                "classifier.6.weight",
                "classifier.6.bias"
            ]
        );
        // Order of the input does not matter.
        let mut shuffled = tv.clone();
        shuffled.reverse();
        let back = from_torchvision(&ck.config, &shuffled).unwrap();
        assert_eq!(bits(&back), bits(&ck.params));

        // Through a file, as a user would hand it over.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgg11.safetensors");
        write_tensors(&path, &tv, HashMap::new()).unwrap();
        let (read, _) = read_tensors(&path).unwrap();
        assert_eq!(
            bits(&from_torchvision(&ck.config, &read).unwrap()),
            bits(&ck.params)
        );
    }

    #[test]
    fn from_torchvision_names_what_is_wrong() {
        let ck = checkpoint();
        let tv = to_torchvision(&ck);
        let missing: Vec<_> = tv
            .iter()
            .filter(|t| t.name != "features.3.bias")
            .cloned()
            .collect();
        let e = from_torchvision(&ck.config, &missing).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Missing { name, .. } if name == "features.3.bias"),
            "{e}"
        );
        assert_eq!(e.to_string(), "tensor `features.3.bias` is missing");

        let mut wrong = tv.clone();
        wrong[10].shape = vec![7];
        let e = from_torchvision(&ck.config, &wrong).unwrap_err();
        assert!(matches!(e, CheckpointError::Shape { .. }), "{e}");

        let mut bn = tv.clone();
        bn.push(NamedTensor::zeros("features.1.running_mean", vec![8]));
        bn.push(NamedTensor {
            name: "features.1.num_batches_tracked".into(),
            shape: vec![],
            data: vec![0.0],
        });
        let e = from_torchvision(&ck.config, &bn).unwrap_err();
        assert!(
            e.to_string()
                .contains("batch-norm VGG variants are not the paper's networks"),
            "{e}"
        );

        let mut extra = tv.clone();
        extra.push(NamedTensor::zeros("classifier.9.weight", vec![2]));
        extra.push(NamedTensor::zeros("aux.bias", vec![2]));
        let e = from_torchvision(&ck.config, &extra).unwrap_err();
        assert!(
            e.to_string().contains("`aux.bias`, `classifier.9.weight`"),
            "{e}"
        );
    }
}
