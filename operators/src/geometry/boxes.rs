//! Axis-aligned boxes. `BoxXyxy` holds corners `[x1, y1, x2, y2]` in whatever unit the caller uses (pixels, or
//! fractions of the image); conversions say which they take.

/// Corners `[x1, y1, x2, y2]`, with `x1 <= x2` and `y1 <= y2` once [`BoxXyxy::ordered`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxXyxy(pub [f32; 4]);

impl BoxXyxy {
    pub fn width(&self) -> f32 {
        (self.0[2] - self.0[0]).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.0[3] - self.0[1]).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Corners swapped where needed so that x1 <= x2 and y1 <= y2.
    pub fn ordered(self) -> BoxXyxy {
        let [x1, y1, x2, y2] = self.0;
        BoxXyxy([x1.min(x2), y1.min(y2), x1.max(x2), y1.max(y2)])
    }

    /// Clamped into `[0, w] × [0, h]`; NaN coordinates become 0.
    pub fn clamped(self, w: f32, h: f32) -> BoxXyxy {
        let c = |v: f32, hi: f32| if v.is_nan() { 0.0 } else { v.clamp(0.0, hi) };
        let [x1, y1, x2, y2] = self.ordered().0;
        BoxXyxy([c(x1, w), c(y1, h), c(x2, w), c(y2, h)])
    }

    /// Scaled by `(sx, sy)`: pixels to fractions with `1/w, 1/h`, and back with `w, h`.
    pub fn scaled(self, sx: f32, sy: f32) -> BoxXyxy {
        let [x1, y1, x2, y2] = self.0;
        BoxXyxy([x1 * sx, y1 * sy, x2 * sx, y2 * sy])
    }
}

/// Centre-size `[cx, cy, w, h]` to corners.
pub fn cxcywh_to_xyxy(b: [f32; 4]) -> BoxXyxy {
    let [cx, cy, w, h] = b;
    BoxXyxy([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h])
}

/// Intersection over union; 0 when both are empty.
pub fn iou(a: &BoxXyxy, b: &BoxXyxy) -> f32 {
    let (a, b) = (a.ordered().0, b.ordered().0);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = BoxXyxy(a).area() + BoxXyxy(b).area() - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Class-agnostic non-maximum suppression, as torchvision's `nms`: indices of the boxes kept, by decreasing score
/// (ties keep input order); a box is dropped when its IoU with a kept box exceeds `threshold`.
pub fn nms(boxes: &[BoxXyxy], scores: &[f32], threshold: f32) -> Vec<usize> {
    nms_at_most(boxes, scores, threshold, usize::MAX)
}

/// The first `max` boxes [`nms`] keeps, without comparing the rest: a detector with random or loose weights passes
/// hundreds of queries, and suppressing all of them against each other only to keep ten is most of the work.
pub fn nms_at_most(boxes: &[BoxXyxy], scores: &[f32], threshold: f32, max: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len().min(scores.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.len() >= max {
            break;
        }
        if keep.iter().all(|&k| iou(&boxes[k], &boxes[i]) <= threshold) {
            keep.push(i);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn iou_of_known_boxes() {
        let a = BoxXyxy([0.0, 0.0, 2.0, 2.0]);
        let b = BoxXyxy([1.0, 1.0, 3.0, 3.0]);
        assert!((iou(&a, &b) - 1.0 / 7.0).abs() < 1e-6);
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&BoxXyxy([0.0; 4]), &BoxXyxy([0.0; 4])), 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes =
            [BoxXyxy([0.0, 0.0, 10.0, 10.0]), BoxXyxy([1.0, 1.0, 10.0, 10.0]), BoxXyxy([20.0, 20.0, 30.0, 30.0])];
        assert_eq!(nms(&boxes, &[0.5, 0.9, 0.1], 0.6), vec![1, 2]);
        assert_eq!(nms(&boxes, &[0.5, 0.9, 0.1], 0.95), vec![1, 0, 2]);
    }

    #[test]
    fn cxcywh_converts() {
        assert_eq!(cxcywh_to_xyxy([0.5, 0.5, 1.0, 0.5]).0, [0.0, 0.25, 1.0, 0.75]);
    }

    fn any_box() -> impl Strategy<Value = BoxXyxy> {
        (-10.0f32..110.0, -10.0f32..110.0, -10.0f32..110.0, -10.0f32..110.0)
            .prop_map(|(a, b, c, d)| BoxXyxy([a, b, c, d]))
    }

    proptest! {
        #[test]
        fn iou_is_symmetric_and_bounded(a in any_box(), b in any_box()) {
            let (x, y) = (iou(&a, &b), iou(&b, &a));
            prop_assert!((x - y).abs() < 1e-6);
            prop_assert!((0.0..=1.0 + 1e-6).contains(&x));
        }

        #[test]
        fn nms_at_most_is_the_head_of_nms(
            boxes in proptest::collection::vec(any_box(), 0..40),
            scores in proptest::collection::vec(0.0f32..1.0, 40),
            threshold in 0.0f32..1.0,
            max in 0usize..50,
        ) {
            let mut all = nms(&boxes, &scores[..boxes.len()], threshold);
            all.truncate(max);
            prop_assert_eq!(nms_at_most(&boxes, &scores[..boxes.len()], threshold, max), all);
        }

        #[test]
        fn clamping_keeps_boxes_inside(b in any_box(), w in 1.0f32..100.0, h in 1.0f32..100.0) {
            let c = b.clamped(w, h).0;
            prop_assert!(c[0] <= c[2] && c[1] <= c[3]);
            prop_assert!(c.iter().all(|v| *v >= 0.0) && c[2] <= w && c[3] <= h);
        }

        #[test]
        fn nms_output_has_no_overlap_above_threshold(bs in proptest::collection::vec(any_box(), 0..20), t in 0.1f32..0.9) {
            let scores: Vec<f32> = (0..bs.len()).map(|i| (i * 37 % 11) as f32).collect();
            let keep = nms(&bs, &scores, t);
            for (i, &a) in keep.iter().enumerate() {
                for &b in &keep[i + 1..] {
                    prop_assert!(iou(&bs[a], &bs[b]) <= t);
                }
            }
            // Every dropped box overlaps a kept one of at least its score.
            for d in (0..bs.len()).filter(|d| !keep.contains(d)) {
                prop_assert!(keep.iter().any(|&k| iou(&bs[k], &bs[d]) > t && scores[k] >= scores[d]));
            }
        }

        #[test]
        fn normalizing_round_trips(b in any_box(), w in 1.0f32..4000.0, h in 1.0f32..4000.0) {
            let back = b.scaled(1.0 / w, 1.0 / h).scaled(w, h).0;
            for (x, y) in back.iter().zip(b.0) {
                prop_assert!((x - y).abs() <= 1e-3 * (1.0 + y.abs()));
            }
        }
    }
}
