//! SQL made for annotations: scalar functions over boxes and masks, registered in every `lyrics-prep sql` and
//! `render` session beside the `objects` and `tags` tables of [`crate::sqlviews`].
//!
//! The functions are DataFusion [`ScalarUDFImpl`]s with signatures and documentation. Boxes are `[x1, y1, x2, y2]`
//! as fractions of the image (the `box` of `objects`, or any list of four numbers); masks are the `mask` structs
//! of `objects` (COCO compressed RLE). They compute with the same code the pipeline uses: the box IoU of NMS, the
//! formats of the text stage, the RLE of the segmenter. A NULL argument gives NULL; an argument of the wrong shape
//! is an error naming the function and the argument.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, Int64Builder, ListBuilder, StringArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;
use lyrics_operators::geometry::{BoxXyxy, Rle, iou};
use lyrics_operators::text::{Frame, GroundedFormat, Size};

/// The functions, in the order of [`DOCS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Function {
    BoxArea,
    BoxIou,
    BoxToPixels,
    BoxFormat,
    RleArea,
    RleIou,
    RleBbox,
}

const FUNCTIONS: [Function; 7] = [
    Function::BoxArea,
    Function::BoxIou,
    Function::BoxToPixels,
    Function::BoxFormat,
    Function::RleArea,
    Function::RleIou,
    Function::RleBbox,
];

const SECTION: DocSection =
    DocSection { include: true, label: "Annotation functions", description: Some("Boxes and masks of objects") };

static DOCS: LazyLock<Vec<Documentation>> = LazyLock::new(|| {
    let boxed = "a box [x1, y1, x2, y2] as fractions of the image, e.g. the `box` of `objects`";
    let mask = "a mask {size: [height, width], counts} in COCO compressed RLE, e.g. the `mask` of `objects`";
    vec![
        Documentation::builder(SECTION, "The area of a box, as a fraction of the image.", "box_area(box)")
            .with_argument("box", boxed)
            .with_sql_example("SELECT label, avg(box_area(box)) FROM objects GROUP BY 1")
            .build(),
        Documentation::builder(SECTION, "Intersection over union of two boxes.", "box_iou(a, b)")
            .with_argument("a", boxed)
            .with_argument("b", boxed)
            .build(),
        Documentation::builder(
            SECTION,
            "A box in pixels of an image of `width` × `height`, rounded: [x1, y1, x2, y2].",
            "box_to_pixels(box, width, height)",
        )
        .with_argument("box", boxed)
        .with_argument("width", "the image's width in pixels, e.g. `width` of `objects`")
        .with_argument("height", "the image's height in pixels")
        .build(),
        Documentation::builder(
            SECTION,
            "A box written as one of the grounded formats of the text stage, in the format's frame: formats measured on \
             a padded square or a resized image need the image's width and height.",
            "box_format(box, format[, width, height])",
        )
        .with_argument("box", boxed)
        .with_argument("format", "a format of `[text] formats`, e.g. 'qwen2_vl' or 'shikra'")
        .with_argument("width", "the image's width in pixels, e.g. `width` of `samples`")
        .with_argument("height", "the image's height in pixels")
        .build(),
        Documentation::builder(SECTION, "The number of pixels a mask covers.", "rle_area(mask)")
            .with_argument("mask", mask)
            .build(),
        Documentation::builder(SECTION, "Intersection over union of two masks of one size.", "rle_iou(a, b)")
            .with_argument("a", mask)
            .with_argument("b", mask)
            .build(),
        Documentation::builder(
            SECTION,
            "The tight box of a mask, as fractions of its size; NULL for an empty mask.",
            "rle_bbox(mask)",
        )
        .with_argument("mask", mask)
        .build(),
    ]
});

impl Function {
    fn name(self) -> &'static str {
        match self {
            Function::BoxArea => "box_area",
            Function::BoxIou => "box_iou",
            Function::BoxToPixels => "box_to_pixels",
            Function::BoxFormat => "box_format",
            Function::RleArea => "rle_area",
            Function::RleIou => "rle_iou",
            Function::RleBbox => "rle_bbox",
        }
    }

    fn arity(self) -> usize {
        match self {
            Function::BoxArea | Function::RleArea | Function::RleBbox => 1,
            Function::BoxIou | Function::BoxFormat | Function::RleIou => 2,
            Function::BoxToPixels => 3,
        }
    }

    fn return_type(self) -> DataType {
        match self {
            Function::BoxArea | Function::BoxIou | Function::RleIou => DataType::Float64,
            Function::RleArea => DataType::Int64,
            Function::BoxFormat => DataType::Utf8,
            Function::BoxToPixels => DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
            Function::RleBbox => DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
        }
    }
}

/// One annotation function as a DataFusion scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AnnotationUdf {
    function: Function,
    signature: Signature,
}

impl ScalarUDFImpl for AnnotationUdf {
    fn name(&self) -> &str {
        self.function.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.function.return_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let f = self.function;
        let out: ArrayRef = match f {
            Function::BoxArea => {
                let boxes = boxes(f, 1, &arrays[0])?;
                Arc::new(boxes.iter().map(|b| b.map(area)).collect::<Float64Array>())
            }
            Function::BoxIou => {
                let (a, b) = (boxes(f, 1, &arrays[0])?, boxes(f, 2, &arrays[1])?);
                Arc::new(a.iter().zip(&b).map(|(a, b)| Some(box_iou(&(*a)?, &(*b)?))).collect::<Float64Array>())
            }
            Function::BoxToPixels => {
                let b = boxes(f, 1, &arrays[0])?;
                let (w, h) = (ints(f, 2, &arrays[1])?, ints(f, 3, &arrays[2])?);
                let mut list = ListBuilder::new(Int64Builder::new());
                for ((b, w), h) in b.iter().zip(w.iter()).zip(h.iter()) {
                    match (b, w, h) {
                        (Some(b), Some(w), Some(h)) => {
                            let (w, h) = (w as f64, h as f64);
                            for (v, side) in b.iter().zip([w, h, w, h]) {
                                list.values().append_value((v * side).round() as i64);
                            }
                            list.append(true);
                        }
                        _ => list.append(false),
                    }
                }
                Arc::new(list.finish())
            }
            Function::BoxFormat => {
                let b = boxes(f, 1, &arrays[0])?;
                let formats = strings(f, 2, &arrays[1])?;
                let sizes = match arrays.len() {
                    4 => Some((ints(f, 3, &arrays[2])?, ints(f, 4, &arrays[3])?)),
                    _ => None,
                };
                let mut out = Vec::with_capacity(b.len());
                for (i, (b, name)) in b.iter().zip(formats.iter()).enumerate() {
                    let (Some(b), Some(name)) = (b, name) else {
                        out.push(None);
                        continue;
                    };
                    let format = GroundedFormat::named(name).ok_or_else(|| {
                        let names = GroundedFormat::names().iter().map(|n| format!("'{n}'")).collect::<Vec<_>>();
                        DataFusionError::Execution(format!(
                            "box_format: argument 2 (format) must be one of {}, not '{name}'",
                            names.join(", ")
                        ))
                    })?;
                    let size = match &sizes {
                        Some((w, h)) => {
                            match ((!w.is_null(i)).then(|| w.value(i)), (!h.is_null(i)).then(|| h.value(i))) {
                                (Some(w), Some(h)) if w > 0 && h > 0 => Some(Size::new(w as u32, h as u32)),
                                (Some(_), Some(_)) => {
                                    return exec_err!("box_format: the width and height must be positive");
                                }
                                _ => None,
                            }
                        }
                        None if format.frame() == Frame::Displayed => Some(Size::new(1, 1)),
                        None => {
                            return exec_err!(
                                "box_format: '{name}' measures boxes on the {}; pass the image's width and height: \
                                 box_format(box, '{name}', width, height)",
                                format.frame().describe()
                            );
                        }
                    };
                    out.push(size.map(|size| format.format_box(b.map(|v| v as f32), size)));
                }
                Arc::new(StringArray::from(out))
            }
            Function::RleArea => {
                let masks = masks(f, 1, &arrays[0])?;
                let mut out = Int64Builder::with_capacity(masks.len());
                for mask in &masks {
                    match mask {
                        Some(rle) => out.append_value(rle.area().map_err(|e| bad_mask(f, 1, e))? as i64),
                        None => out.append_null(),
                    }
                }
                Arc::new(out.finish())
            }
            Function::RleIou => {
                let (a, b) = (masks(f, 1, &arrays[0])?, masks(f, 2, &arrays[1])?);
                let mut out = Float64Builder::with_capacity(a.len());
                for (a, b) in a.iter().zip(&b) {
                    match (a, b) {
                        (Some(a), Some(b)) => out.append_value(mask_iou(a, b)?),
                        _ => out.append_null(),
                    }
                }
                Arc::new(out.finish())
            }
            Function::RleBbox => {
                let masks = masks(f, 1, &arrays[0])?;
                let mut list = ListBuilder::new(Float64Builder::new());
                for mask in &masks {
                    match mask.as_ref().map(mask_box).transpose()?.flatten() {
                        Some(b) => {
                            list.values().append_slice(&b);
                            list.append(true);
                        }
                        None => list.append(false),
                    }
                }
                Arc::new(list.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }

    fn documentation(&self) -> Option<&Documentation> {
        DOCS.get(FUNCTIONS.iter().position(|f| *f == self.function)?)
    }
}

fn area(b: [f64; 4]) -> f64 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

fn box_iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    iou(&BoxXyxy(a.map(|v| v as f32)), &BoxXyxy(b.map(|v| v as f32))) as f64
}

fn argument_error(f: Function, index: usize, what: &str) -> DataFusionError {
    DataFusionError::Execution(format!("{}: argument {index} must be {what}", f.name()))
}

fn bad_mask(f: Function, index: usize, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("{}: argument {index} is not a readable mask: {e}", f.name()))
}

/// Each row's box, as four numbers.
fn boxes(f: Function, index: usize, array: &ArrayRef) -> Result<Vec<Option<[f64; 4]>>> {
    let what = "a box: a list of 4 numbers [x1, y1, x2, y2]";
    if matches!(array.data_type(), DataType::Null) {
        return Ok(vec![None; array.len()]);
    }
    let target = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
    let cast = arrow::compute::cast(array, &target)
        .map_err(|_| argument_error(f, index, &format!("{what}, not {}", array.data_type())))?;
    let list = cast.as_list::<i32>();
    // The flat values and the offsets, rather than `list.value(row)`: an array made per row costs more than the
    // arithmetic on it.
    let values = list.values().as_primitive::<Float64Type>();
    let offsets = list.value_offsets();
    let mut out = Vec::with_capacity(list.len());
    for row in 0..list.len() {
        if list.is_null(row) {
            out.push(None);
            continue;
        }
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        if end - start != 4 || (start..end).any(|i| values.is_null(i)) {
            return Err(argument_error(f, index, &format!("{what}; row {row} has {} values", end - start)));
        }
        let v = &values.values()[start..end];
        out.push(Some([v[0], v[1], v[2], v[3]]));
    }
    Ok(out)
}

fn ints(f: Function, index: usize, array: &ArrayRef) -> Result<Int64Array> {
    let cast = arrow::compute::cast(array, &DataType::Int64)
        .map_err(|_| argument_error(f, index, &format!("an integer, not {}", array.data_type())))?;
    Ok(cast.as_primitive::<Int64Type>().clone())
}

fn strings(f: Function, index: usize, array: &ArrayRef) -> Result<StringArray> {
    let cast = arrow::compute::cast(array, &DataType::Utf8)
        .map_err(|_| argument_error(f, index, &format!("a string, not {}", array.data_type())))?;
    Ok(cast.as_string::<i32>().clone())
}

/// Each row's mask.
fn masks(f: Function, index: usize, array: &ArrayRef) -> Result<Vec<Option<Rle>>> {
    let what = "a mask: a struct {size: [height, width], counts}";
    if matches!(array.data_type(), DataType::Null) {
        return Ok(vec![None; array.len()]);
    }
    let Some(mask) = array.as_struct_opt() else {
        return Err(argument_error(f, index, &format!("{what}, not {}", array.data_type())));
    };
    let (Some(size), Some(counts)) = (mask.column_by_name("size"), mask.column_by_name("counts")) else {
        return Err(argument_error(f, index, what));
    };
    let sizes = arrow::compute::cast(size, &DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))))
        .map_err(|_| argument_error(f, index, what))?;
    let sizes = sizes.as_list::<i32>();
    let counts = strings(f, index, counts)?;
    let mut out = Vec::with_capacity(mask.len());
    for row in 0..mask.len() {
        if mask.is_null(row) || sizes.is_null(row) || counts.is_null(row) {
            out.push(None);
            continue;
        }
        let size = sizes.value(row);
        let size = size.as_primitive::<Int64Type>();
        if size.len() != 2 || size.values().iter().any(|v| !(0..=u32::MAX as i64).contains(v)) {
            return Err(argument_error(
                f,
                index,
                &format!("{what}; row {row} has a size of {} values", size.len()),
            ));
        }
        out.push(Some(Rle {
            size: [size.value(0) as u32, size.value(1) as u32],
            counts: counts.value(row).into(),
        }));
    }
    Ok(out)
}

fn mask_iou(a: &Rle, b: &Rle) -> Result<f64> {
    if a.size != b.size {
        return exec_err!("rle_iou: the masks differ in size ({:?} and {:?})", a.size, b.size);
    }
    let (a, b) = (
        a.decode().map_err(|e| bad_mask(Function::RleIou, 1, e))?,
        b.decode().map_err(|e| bad_mask(Function::RleIou, 2, e))?,
    );
    let (mut both, mut either) = (0u64, 0u64);
    for (x, y) in a.iter().zip(&b) {
        both += (*x && *y) as u64;
        either += (*x || *y) as u64;
    }
    Ok(if either == 0 { 0.0 } else { both as f64 / either as f64 })
}

/// The tight box of the mask's pixels, as fractions of its size.
fn mask_box(rle: &Rle) -> Result<Option<[f64; 4]>> {
    let [h, w] = rle.size;
    let mask = rle.decode().map_err(|e| bad_mask(Function::RleBbox, 1, e))?;
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    for (i, _) in mask.iter().enumerate().filter(|(_, v)| **v) {
        let (x, y) = ((i as u32) % w, (i as u32) / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
    }
    if x0 == u32::MAX {
        return Ok(None);
    }
    let (w, h) = (w as f64, h as f64);
    Ok(Some([x0 as f64 / w, y0 as f64 / h, x1 as f64 / w, y1 as f64 / h]))
}

/// Registers the functions on `ctx`.
pub fn register(ctx: &SessionContext) {
    for function in FUNCTIONS {
        let signature = match function {
            // The image's size is optional for formats measured on the displayed image.
            Function::BoxFormat => Signature::one_of(
                vec![TypeSignature::Any(function.arity()), TypeSignature::Any(function.arity() + 2)],
                Volatility::Immutable,
            ),
            _ => Signature::any(function.arity(), Volatility::Immutable),
        };
        ctx.register_udf(ScalarUDF::new_from_impl(AnnotationUdf { function, signature }));
    }
}
