//! Per-image cost of each step of the ingest path, single thread: decode, resize, encode, hash, and the whole
//! operator, on criterion. `cargo bench -p lyrics-operators --bench image_ops`; without `IMAGE_OPS_FILES` (JPEG
//! paths separated by `:`) it uses a generated 640×480 noisy JPEG at quality 90. Each benchmark's throughput is in
//! images (`elem/s`); its time is for one pass over every input.

use std::hint::black_box;

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime};
use image::{ImageDecoder, Rgb, RgbImage};
use lyrics_operators::image::{EncodeFormat, EncodeSpec, ImageOperator, ResizeMode, ResizeSpec};

fn generated() -> Vec<u8> {
    let mut state = 12345u32;
    let img = RgbImage::from_fn(640, 480, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 24) as u8;
        // Wrapping, as the release build always computed it: the image stays the one measured before.
        Rgb([
            ((x / 3) as u8).wrapping_add(n),
            ((y / 2) as u8).wrapping_add(n),
            (((x + y) / 5) as u8).wrapping_add(n),
        ])
    });
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90).encode(img.as_raw(), 640, 480, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

/// Times `f` over every input, per pass; the group's throughput turns that into images per second.
fn time<T>(group: &mut BenchmarkGroup<'_, WallTime>, label: &str, inputs: &[Vec<u8>], f: impl Fn(&[u8]) -> T) {
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function(label, |b| {
        b.iter(|| {
            for input in inputs {
                black_box(f(input));
            }
        })
    });
}

fn image_ops(c: &mut Criterion) {
    let files: Vec<String> = std::env::var("IMAGE_OPS_FILES")
        .map(|v| v.split(':').filter(|f| !f.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let inputs: Vec<Vec<u8>> = if files.is_empty() {
        vec![generated()]
    } else {
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    };
    let mut group = c.benchmark_group(format!("image_ops ({} image(s), single thread)", inputs.len()));
    let decoded: Vec<RgbImage> = inputs.iter().map(|d| image::load_from_memory(d).unwrap().into_rgb8()).collect();
    time(&mut group, "decode (image + zune-jpeg)", &inputs, |d| {
        let decoder = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(d)).unwrap();
        let mut buf = vec![0u8; decoder.total_bytes() as usize];
        decoder.read_image(&mut buf).unwrap();
        buf
    });
    let spec = ResizeSpec { mode: ResizeMode::KeepRatio, image_size: 512, ..ResizeSpec::default() };
    let resize_only = ImageOperator { resize: spec, keep_pixels: true, ..ImageOperator::default() };
    time(&mut group, "sha256 (ring)", &inputs, |d| ring::digest::digest(&ring::digest::SHA256, d));
    time(&mut group, "decode + validate (no resize)", &inputs, |d| {
        ImageOperator::default().process(d.to_vec()).unwrap()
    });
    time(&mut group, "decode + resize 512 + encode q90", &inputs, |d| {
        let op = ImageOperator {
            resize: spec,
            encode: EncodeSpec { format: EncodeFormat::Jpg, quality: 90 },
            ..ImageOperator::default()
        };
        op.process(d.to_vec()).unwrap()
    });
    time(&mut group, "decode + resize 512 (pixels kept)", &inputs, |d| resize_only.process(d.to_vec()).unwrap());
    let raws: Vec<Vec<u8>> = decoded.iter().map(|d| d.as_raw().clone()).collect();
    time(&mut group, "resize 640x480 -> 512x384 (bilinear)", &raws, |raw| {
        use fast_image_resize::images::{Image, ImageRef};
        let src = ImageRef::new(640, 480, raw, fast_image_resize::PixelType::U8x3).unwrap();
        let mut dst = Image::new(512, 384, fast_image_resize::PixelType::U8x3);
        let options = fast_image_resize::ResizeOptions::new()
            .resize_alg(fast_image_resize::ResizeAlg::Convolution(fast_image_resize::FilterType::Bilinear));
        fast_image_resize::Resizer::new().resize(&src, &mut dst, &options).unwrap();
        dst.into_vec()
    });
    let small: Vec<Vec<u8>> = decoded
        .iter()
        .map(|img| {
            let resized = image::imageops::thumbnail(img, 512, 384);
            resized.into_raw()
        })
        .collect();
    time(&mut group, "encode 512x384 q90 (jpeg-encoder)", &small, |raw| {
        let mut out = Vec::new();
        let mut e = jpeg_encoder::Encoder::new(&mut out, 90);
        e.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
        e.encode(raw, 512, 384, jpeg_encoder::ColorType::Rgb).unwrap();
        out
    });
    group.finish();
}

criterion_group!(benches, image_ops);
criterion_main!(benches);
