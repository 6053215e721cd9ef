//! The segmenter role: given an image and the detector's boxes in it, a mask for each box. Each family is a module
//! here that follows a public export users download (its module names the export and the reference code its pre-
//! and post-processing follow): `sam`, `hf_sam` and `sam2` (an image encoder once per image, a prompt decoder on
//! each box or batch of boxes) and `salient_crop` (ISNet on each box's crop).
//!
//! The refiner drives a segmenter in the same three steps as the other models: [`SegmenterInput::prepare`] on the
//! decode threads (the image alone: the encoder's input, as the loaded family's [`BoxSegmenter::input`] asks),
//! [`Segmenter::infer`] on the inference thread once the boxes are known (the sessions; low-resolution masks leave
//! it as the decoder gives them, 256×256 logits per box), then [`MaskOut::finish`] on the CPU threads (upsampled to
//! the displayed image and RLE-encoded, by the shared code of `masks`).
//!
//! A family implements [`BoxSegmenter`] for its loaded sessions and gives a [`Family`]: its files, its graph
//! contracts, the settings it writes into the `refiner` column, and how it loads. It is registered in one line of
//! the `families!` list below, which is all the models file and the refiner know of it.

mod hf_sam;
mod masks;
mod salient_crop;
mod sam;
mod sam2;

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::batching::in_chunks;
use super::preprocess::{Normalization, longest_side_size, resize_bilinear, to_planar};
use super::runtime::{Contract, Device, OnnxModel, refuse};
use super::{ModelError, ModelPaths, SegmenterConfig};
use crate::geometry::BoxXyxy;

pub use masks::{Frame, LOW_RES_SIDE, Mask, MaskOut, pixel_rect};
pub use salient_crop::{crop_region, salient_input, salient_output};

/// Declares the families: the `family` value of the models file (the variant in snake case, which serde reads)
/// and the module that implements it, in the order error messages list them.
macro_rules! families {
    ($($(#[$doc:meta])* $variant:ident => $module:ident,)*) => {
        /// Which segmenter the `[segmenter]` section loads.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum SegmenterFamily {
            $($(#[$doc])* $variant,)*
        }

        impl SegmenterFamily {
            /// Every family, in the order of the list.
            const ALL: &'static [SegmenterFamily] = &[$(SegmenterFamily::$variant,)*];

            /// What the family's module registers.
            fn registered(self) -> &'static Family {
                match self {
                    $(SegmenterFamily::$variant => &$module::FAMILY,)*
                }
            }
        }
    };
}

families! {
    /// Segment Anything: samexporter's image encoder once per image, the official prompt decoder once per box.
    Sam => sam,
    /// transformers' SAM / SlimSAM as transformers.js ships it: `vision_encoder` once per image,
    /// `prompt_encoder_mask_decoder` on many boxes per call.
    HfSam => hf_sam,
    /// SAM 2 / 2.1 as samexporter exports it: encoder once per image, decoder on many boxes per call.
    Sam2 => sam2,
    /// ISNet salient-object segmentation on each box's crop.
    SalientCrop => salient_crop,
}

impl SegmenterFamily {
    /// The keys of the family's files in `[segmenter]`, each required, in the order its loader takes them.
    pub fn files(self) -> &'static [&'static str] {
        self.registered().files
    }
}

/// A family as its module registers it: what is known of it before any graph is loaded.
pub(crate) struct Family {
    /// The keys of its files in `[segmenter]` (`encoder`, `model`, ...), in the order `load` takes them.
    files: &'static [&'static str],
    /// Its encoders' and decoders' contracts. A graph that follows none of its family's is refused with every
    /// family's listed, so that the message can name the family the graph does follow.
    encoders: &'static [Contract],
    decoders: &'static [Contract],
    /// The settings it writes into the `refiner` column besides its family and files: those that change its masks.
    /// The column is hashed into the spec, so a setting added here changes the spec of every job of the family.
    settings: fn(&SegmenterConfig) -> Vec<(&'static str, Value)>,
    /// Loads its sessions from its files (in the order of `files`), refusing graphs that do not follow its contract
    /// and a `batch_size` its decoder cannot take.
    load: Load,
}

/// A family's loader: its settings, its files, the device and the threads per session.
type Load = fn(&SegmenterConfig, &[&Path], Device, usize) -> Result<Box<dyn BoxSegmenter>, ModelError>;

/// [`Family::settings`] of a family that describes none.
fn no_settings(_: &SegmenterConfig) -> Vec<(&'static str, Value)> {
    Vec::new()
}

/// A loaded family in the segmenter role. One thread owns it (through [`Segmenter`]) and calls
/// [`BoxSegmenter::infer`] once per image that has boxes; what depends on the image alone was prepared before, on
/// the decode threads, as [`BoxSegmenter::input`] says.
pub trait BoxSegmenter: Send {
    /// What [`SegmenterInput::prepare`] must make of each image before [`BoxSegmenter::infer`] takes it: read from
    /// the loaded graphs. [`SegmenterInput::None`] for a family that reads the image itself.
    fn input(&self) -> SegmenterInput;

    /// A mask for each of `boxes` (at least one; pixels of `image`, clamped to it), in their order: finished
    /// ([`MaskOut::Done`]), or low-resolution logits for the CPU threads to finish ([`MaskOut::LowRes`]).
    /// `prepared` is `image` as [`BoxSegmenter::input`] asks, `None` only where that is
    /// [`SegmenterInput::None`]. An error fails this image only.
    fn infer(
        &mut self,
        image: &RgbImage,
        prepared: Option<&SegmenterImage>,
        boxes: &[BoxXyxy],
    ) -> Result<Vec<MaskOut>, ModelError>;

    /// The sessions, for their run statistics.
    fn models(&self) -> Vec<&OnnxModel>;
}

/// A loaded segmenter: the family the models file names, behind the role's trait.
pub struct Segmenter(Box<dyn BoxSegmenter>);

impl Segmenter {
    /// Loads the sessions of `config`'s family from `files` (in the order of [`SegmenterFamily::files`]: an encoder
    /// and a decoder, or salient_crop's model), refusing graphs that do not follow the family's contract and batch
    /// sizes the decoder cannot take.
    pub fn load(
        config: &SegmenterConfig,
        files: &[&Path],
        device: Device,
        threads: usize,
    ) -> Result<Segmenter, ModelError> {
        (config.family.registered().load)(config, files, device, threads).map(Segmenter)
    }

    /// [`Segmenter::load`] from the local files of a models file (`segmenter.encoder`, ...).
    pub fn load_files(
        config: &SegmenterConfig,
        files: &ModelPaths,
        device: Device,
        threads: usize,
    ) -> Result<Segmenter, ModelError> {
        let paths: Vec<&Path> = config
            .family
            .files()
            .iter()
            .map(|key| files.get(&format!("segmenter.{key}")).map(PathBuf::as_path))
            .collect::<Result<_, _>>()?;
        Segmenter::load(config, &paths, device, threads)
    }

    /// The encoder input this segmenter takes (for [`SegmenterInput::prepare`]).
    pub fn input(&self) -> SegmenterInput {
        self.0.input()
    }

    /// A mask for each box (pixels of the original image); the image is prepared here if the prepare stage did not.
    pub fn infer(
        &mut self,
        image: &RgbImage,
        prepared: Option<&SegmenterImage>,
        boxes: &[BoxXyxy],
    ) -> Result<Vec<MaskOut>, ModelError> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let owned;
        let prepared = match prepared {
            Some(p) => Some(p),
            None => {
                owned = self.0.input().prepare(image)?;
                owned.as_ref()
            }
        };
        self.0.infer(image, prepared, boxes)
    }

    /// The sessions, for their run statistics.
    pub fn models(&self) -> Vec<&OnnxModel> {
        self.0.models()
    }
}

/// The `segmenter` entry of the `refiner` column: the family, each file the section names (`file` gives a key's
/// source and checksum), and the settings the family describes. Known before any session is loaded.
pub(crate) fn describe(config: &SegmenterConfig, files: &ModelPaths, file: impl Fn(&str) -> Value) -> Value {
    let mut v = json!({ "family": config.family });
    for key in ["encoder", "decoder", "model"] {
        if files.paths.contains_key(&format!("segmenter.{key}")) {
            v[key] = file(&format!("segmenter.{key}"));
        }
    }
    for (key, value) in (config.family.registered().settings)(config) {
        v[key] = value;
    }
    v
}

/// Side of the square encoder input of SAM, and of the families that keep its frame (hf_sam, sam2).
pub const SAM_SIDE: usize = 1024;

/// What [`SegmenterInput::prepare`] computes from the image alone: the encoder's input and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmenterImage {
    pub shape: Vec<usize>,
    pub tensor: Vec<f32>,
}

/// The image input a loaded segmenter's encoder takes, read from the graph.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SegmenterInput {
    /// No encoder (the family reads the image itself, as salient_crop crops it per box).
    #[default]
    None,
    /// `[1, 3, side, side]`: the longest side resized to `side` (SAM's rounding, PIL bilinear), normalized, zero
    /// padding bottom and right.
    Padded { side: u32, normalization: Normalization },
    /// `[H, W, 3]`: the longest side resized to `side`, raw 0..255 values (a graph that normalizes and pads).
    Resized { side: u32 },
    /// `[1, 3, side, side]`: the image stretched to `side`², normalized.
    Stretched { side: u32, normalization: Normalization },
}

impl SegmenterInput {
    /// What can be computed from the image alone, before boxes are known: the encoder's input (pure CPU; run on
    /// the decode threads).
    pub fn prepare(&self, image: &RgbImage) -> Result<Option<SegmenterImage>, ModelError> {
        Ok(match *self {
            SegmenterInput::None => None,
            SegmenterInput::Padded { side, normalization } => {
                let (w, h) = longest_side_size(image.width(), image.height(), side);
                let resized = resize_bilinear(image, w, h)?;
                let side = side as usize;
                Some(SegmenterImage {
                    shape: vec![1, 3, side, side],
                    tensor: to_planar(&resized, &normalization, side, side),
                })
            }
            SegmenterInput::Resized { side } => {
                let (w, h) = longest_side_size(image.width(), image.height(), side);
                let resized = resize_bilinear(image, w, h)?;
                Some(SegmenterImage {
                    shape: vec![h as usize, w as usize, 3],
                    tensor: resized.as_raw().iter().map(|v| f32::from(*v)).collect(),
                })
            }
            SegmenterInput::Stretched { side, normalization } => {
                let resized = resize_bilinear(image, side, side)?;
                let side = side as usize;
                Some(SegmenterImage {
                    shape: vec![1, 3, side, side],
                    tensor: to_planar(&resized, &normalization, side, side),
                })
            }
        })
    }
}

/// The image input of a family with an encoder, which [`Segmenter::infer`] prepares when the prepare stage did not.
fn prepared_image(prepared: Option<&SegmenterImage>) -> Result<&SegmenterImage, ModelError> {
    prepared.ok_or_else(|| ModelError::Preprocess("no segmenter input was prepared".into()))
}

/// The encoder and the decoder of a family that takes the two (`family` names it when `files` are not two).
fn encoder_and_decoder(
    family: &str,
    files: &[&Path],
    device: Device,
    threads: usize,
) -> Result<(OnnxModel, OnnxModel), ModelError> {
    let [encoder, decoder] = files else {
        return Err(ModelError::Config(format!("{family} needs an encoder and a decoder")));
    };
    Ok((
        OnnxModel::load("segmenter.encoder", encoder, device, threads)?,
        OnnxModel::load("segmenter.decoder", decoder, device, threads)?,
    ))
}

/// `Ok` when `model` follows `contract`; else its refusal, which lists `known` (and the one the graph follows).
fn follow(model: &OnnxModel, contract: &Contract, known: &[Contract]) -> Result<(), ModelError> {
    if contract.matches(model) { Ok(()) } else { Err(refuse(model, contract.key, known)) }
}

/// [`follow`] for an encoder, among every family's encoders.
fn follow_encoder(model: &OnnxModel, contract: &Contract) -> Result<(), ModelError> {
    follow(model, contract, &known(|family| family.encoders))
}

/// [`follow`] for a decoder, among every family's decoders.
fn follow_decoder(model: &OnnxModel, contract: &Contract) -> Result<(), ModelError> {
    follow(model, contract, &known(|family| family.decoders))
}

/// One part of every family's contracts, in the order of the families.
fn known(part: impl Fn(&Family) -> &'static [Contract]) -> Vec<Contract> {
    SegmenterFamily::ALL.iter().flat_map(|family| part(family.registered()).iter().copied()).collect()
}

/// Refuses `segmenter.batch_size` above 1 for `what`, a decoder that takes one box per call.
fn refuse_batch(config: &SegmenterConfig, what: &str) -> Result<(), ModelError> {
    match config.batch_size {
        Some(n) if n > 1 => Err(ModelError::Config(format!(
            "segmenter.batch_size = {n}: {what} takes one box per decoder call; remove the setting or use a decoder \
             that takes many (hf_sam, sam2)"
        ))),
        _ => Ok(()),
    }
}

/// Whether a decoder's box dimension (`axis` of `input`) takes more than one box per call.
fn takes_many(decoder: &OnnxModel, input: &str, axis: usize) -> bool {
    decoder.input(input).is_some_and(|p| p.dim(axis).is_none_or(|d| d > 1))
}

/// Boxes per decoder call: the setting, else every box of the image where the decoder takes many, else one.
fn batch_of(setting: Option<usize>, many: bool) -> Option<usize> {
    match (setting, many) {
        (Some(n), true) => Some(n),
        (_, true) => None,
        (_, false) => Some(1),
    }
}

/// The corners of `boxes` in a decoder's input frame, `[x1, y1, x2, y2]` each, flattened.
fn scaled_corners(boxes: &[BoxXyxy], sx: f32, sy: f32) -> Vec<f32> {
    boxes.iter().flat_map(|b| [b.0[0] * sx, b.0[1] * sy, b.0[2] * sx, b.0[3] * sy]).collect()
}

/// Masks of `boxes` from `call` on consecutive chunks of at most `per_call` boxes (decoders that take many boxes
/// per call take them in one piece where they can), through [`in_chunks`]: out-of-memory halves the chunk, and a
/// chunk that fails otherwise is rerun box by box; the image fails with the first box that fails alone.
fn in_box_batches(
    boxes: &[BoxXyxy],
    per_call: Option<usize>,
    call: impl FnMut(&[BoxXyxy]) -> Result<Vec<MaskOut>, ModelError>,
) -> Result<Vec<MaskOut>, ModelError> {
    in_chunks(boxes, per_call.unwrap_or(boxes.len()), "segmenter.decoder", |_, _| true, call).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_is_read_by_its_name_and_takes_its_files() {
        let families: Vec<(SegmenterFamily, &[&str])> = ["sam", "hf_sam", "sam2", "salient_crop"]
            .iter()
            .map(|name| {
                let family: SegmenterFamily = serde_json::from_value(json!(name)).unwrap();
                assert_eq!(json!(family), json!(name), "written as it is read");
                (family, family.files())
            })
            .collect();
        let files: Vec<&[&str]> = families.iter().map(|(_, files)| *files).collect();
        assert_eq!(
            files,
            [&["encoder", "decoder"][..], &["encoder", "decoder"], &["encoder", "decoder"], &["model"]]
        );
        assert_eq!(families.iter().map(|(family, _)| *family).collect::<Vec<_>>(), SegmenterFamily::ALL);
    }

    #[test]
    fn a_refusal_lists_every_familys_contracts_in_the_order_of_the_families() {
        let keys = |part: fn(&Family) -> &'static [Contract]| -> Vec<&str> {
            known(part).iter().map(|contract| contract.key).collect()
        };
        assert_eq!(
            keys(|family| family.encoders),
            ["family = \"sam\" (encoder)", "family = \"hf_sam\" (vision_encoder)", "family = \"sam2\" (encoder)"]
        );
        assert_eq!(
            keys(|family| family.decoders),
            [
                "family = \"sam\" (official decoder)",
                "family = \"hf_sam\" (prompt_encoder_mask_decoder)",
                "family = \"hf_sam\" (prompt_encoder_mask_decoder with input_boxes)",
                "family = \"sam2\" (decoder)",
            ]
        );
    }
}
