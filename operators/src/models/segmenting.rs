//! The "detector that segments" role: one model family that, given an image and short noun phrases, returns every
//! instance of each phrase as a box with its mask and score (SAM 3), where the tagger → detector → segmenter chain
//! needs two models for the same objects.
//!
//! The refiner drives such a family in the same three steps as the other models: [`StretchedInput::prepare`] on
//! the decode threads (the image alone: resizing and normalization), [`SegmentingDetector::infer`] on the inference
//! thread (the sessions; masks leave it as low-resolution logits), then `finish` on the CPU threads (masks upsampled
//! to the displayed image and RLE-encoded). A family is a folder under `models/` that implements this trait; the
//! refiner knows nothing else of it.

use image::RgbImage;

use super::preprocess::{Normalization, resize_bilinear, to_planar};
use super::{Detection, DetectorImage, DetectorPrompt, MaskOut, ModelError, OnnxModel, PromptSource, Tag};

/// The image input of a detector that segments: the image stretched to `width`×`height` (Pillow's bilinear),
/// planar RGB normalized by `normalization`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StretchedInput {
    pub width: u32,
    pub height: u32,
    pub normalization: Normalization,
}

impl StretchedInput {
    /// The model input of `image` (pure CPU; run on the decode threads).
    pub fn prepare(&self, image: &RgbImage) -> Result<DetectorImage, ModelError> {
        let resized = resize_bilinear(image, self.width, self.height)?;
        let (w, h) = (self.width as usize, self.height as usize);
        Ok(DetectorImage { tensor: to_planar(&resized, &self.normalization, w, h), width: w, height: h })
    }
}

/// A loaded family in the "detector that segments" role. One thread owns it and calls [`infer`] once per image;
/// the image's features are computed once there and reused for every prompt.
///
/// [`infer`]: SegmentingDetector::infer
pub trait SegmentingDetector: Send {
    /// What [`StretchedInput::prepare`] must make of each image before [`SegmentingDetector::infer`] takes it:
    /// read from the loaded graphs.
    fn input(&self) -> StretchedInput;

    /// The instances of `prompts` in one prepared image of a `width`×`height` (displayed) image: each a
    /// [`Detection`] whose `phrase` is the prompt that found it and whose box is in pixels of that image (not
    /// clamped), with its mask still to finish on a CPU thread ([`MaskOut::finish`]); merged across prompts by
    /// the family's rule, the best first. `Ok` with no instances when nothing passes; an error fails this image
    /// only.
    fn infer(
        &mut self,
        image: &DetectorImage,
        prompts: &[String],
        width: u32,
        height: u32,
    ) -> Result<Vec<(Detection, MaskOut)>, ModelError>;

    /// The sessions, for their run statistics.
    fn models(&self) -> Vec<&OnnxModel>;
}

/// The prompts of one image for a family that takes one short phrase per run: each tag, each class, or each phrase
/// of the caption (split at punctuation, lower case, each once); empty when there is nothing to look for.
pub fn phrase_prompts(prompt: &DetectorPrompt, tags: &[Tag], caption: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |phrase: &str| {
        let phrase = phrase.split_whitespace().collect::<Vec<_>>().join(" ");
        if !phrase.is_empty() && !out.contains(&phrase) {
            out.push(phrase);
        }
    };
    match prompt {
        DetectorPrompt::Source(PromptSource::Tags) => tags.iter().for_each(|t| push(&t.tag)),
        DetectorPrompt::Classes(classes) => classes.iter().for_each(|c| push(c)),
        DetectorPrompt::Source(PromptSource::Caption) => {
            let caption = caption.unwrap_or_default().to_lowercase();
            caption.split(|c: char| ".,;:!?\n()[]\"".contains(c)).for_each(&mut push);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_prompt_per_tag_class_or_caption_phrase() {
        let tags = vec![Tag { tag: "dog".into(), score: 0.9 }, Tag { tag: "red  car".into(), score: 0.8 }];
        let by_tags = phrase_prompts(&DetectorPrompt::Source(PromptSource::Tags), &tags, Some("ignored"));
        assert_eq!(by_tags, ["dog", "red car"]);
        let classes = DetectorPrompt::Classes(vec!["person".into(), " cat ".into(), "person".into()]);
        assert_eq!(phrase_prompts(&classes, &tags, None), ["person", "cat"]);
        let caption = DetectorPrompt::Source(PromptSource::Caption);
        let phrases = phrase_prompts(&caption, &[], Some("A Dog, on a red sofa. Next to (a cat)!"));
        assert_eq!(phrases, ["a dog", "on a red sofa", "next to", "a cat"]);
        assert!(phrase_prompts(&caption, &tags, None).is_empty());
        assert!(phrase_prompts(&caption, &tags, Some(" .. ")).is_empty());
    }
}
