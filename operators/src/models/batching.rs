//! Batches of model calls, one loop for the tagger's images, the detector's images and the segmenter's boxes:
//! consecutive chunks of items, halved when the device runs out of memory, and a chunk that fails otherwise rerun
//! item by item, so that only a failing item gets the error.

use super::ModelError;
use super::runtime::is_out_of_memory;

/// Runs `call` on consecutive chunks of `items`, at most `size` items each; `joins(first, next)` says whether
/// `next` may share a chunk that starts with `first` (images of one size, for a graph that cannot pad). A call
/// returns one result per item of its chunk (another count is `model`'s contract error). On out-of-memory, the
/// chunk is retried at half its size, and the smaller size stays for the rest; any other failure of a chunk of
/// several reruns its items one by one. One result per item, in order.
pub(crate) fn in_chunks<T, R>(
    items: &[T],
    size: usize,
    model: &str,
    joins: impl Fn(&T, &T) -> bool,
    mut call: impl FnMut(&[T]) -> Result<Vec<R>, ModelError>,
) -> Vec<Result<R, ModelError>> {
    let mut counted = |chunk: &[T]| -> Result<Vec<R>, ModelError> {
        let results = call(chunk)?;
        if results.len() != chunk.len() {
            return Err(ModelError::Contract {
                model: model.to_string(),
                message: format!("{} results for {} inputs", results.len(), chunk.len()),
            });
        }
        Ok(results)
    };
    let mut out = Vec::with_capacity(items.len());
    let mut size = size.max(1);
    let mut start = 0;
    while start < items.len() {
        let mut end = start + 1;
        while end - start < size && end < items.len() && joins(&items[start], &items[end]) {
            end += 1;
        }
        let chunk = &items[start..end];
        match counted(chunk) {
            Ok(results) => out.extend(results.into_iter().map(Ok)),
            Err(e) if is_out_of_memory(&e) && chunk.len() > 1 => {
                size = (chunk.len() / 2).max(1);
                continue;
            }
            Err(_) if chunk.len() > 1 => {
                for one in chunk {
                    let result = counted(std::slice::from_ref(one));
                    out.push(result.and_then(|mut r| {
                        r.pop().ok_or_else(|| ModelError::Postprocess(format!("{model} gave no result")))
                    }));
                }
            }
            Err(e) => out.push(Err(e)),
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom() -> ModelError {
        ModelError::Run { model: "m".into(), message: "Failed to allocate memory: CUDA out of memory".into() }
    }

    #[test]
    fn out_of_memory_halves_the_chunk_for_the_rest() {
        let items: Vec<u32> = (0..10).collect();
        let mut calls = Vec::new();
        let out = in_chunks(
            &items,
            8,
            "m",
            |_, _| true,
            |chunk| {
                calls.push(chunk.len());
                if chunk.len() > 2 { Err(oom()) } else { Ok(chunk.iter().map(|x| x * 10).collect()) }
            },
        );
        assert_eq!(calls, [8, 4, 2, 2, 2, 2, 2]);
        assert_eq!(
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            (0..10).map(|x| x * 10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_failing_chunk_is_rerun_item_by_item_so_only_the_bad_item_fails() {
        let items = [1, 2, 3, 4, 5];
        let out = in_chunks(
            &items,
            4,
            "m",
            |_, _| true,
            |chunk| {
                if chunk.contains(&3) {
                    Err(ModelError::Run { model: "m".into(), message: "bad input".into() })
                } else {
                    Ok(chunk.to_vec())
                }
            },
        );
        let ok: Vec<Option<i32>> = out.iter().map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(ok, [Some(1), Some(2), None, Some(4), Some(5)]);
        assert!(matches!(&out[2], Err(ModelError::Run { message, .. }) if message == "bad input"));
    }

    #[test]
    fn chunks_hold_only_items_that_join_and_a_wrong_count_is_a_contract_error() {
        let items = [(1, 'a'), (1, 'b'), (2, 'c'), (2, 'd'), (2, 'e')];
        let mut calls = Vec::new();
        let out = in_chunks(
            &items,
            8,
            "detector",
            |a, b| a.0 == b.0,
            |chunk| {
                calls.push(chunk.iter().map(|c| c.1).collect::<String>());
                Ok(chunk.iter().map(|c| c.1).collect())
            },
        );
        assert_eq!(calls, ["ab", "cde"]);
        assert_eq!(out.len(), 5);
        let short = in_chunks(&[1, 2], 2, "detector", |_, _| true, |_| Ok(Vec::<i32>::new()));
        assert!(short.iter().all(|r| matches!(r, Err(ModelError::Contract { model, .. }) if model == "detector")));
    }
}
