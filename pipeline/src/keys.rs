//! Item keys: what makes one acceptable, and how one becomes a file path that stays inside a folder.
//!
//! Keys come from input the job does not control (tar member names, manifest fields, Parquet columns, COCO file
//! names), and later become file names (`export`, `render`) and the `image` of conversations. So every key a
//! source emits is checked here first ([`check_key`]): a key that is empty, longer than [`MAX_KEY_BYTES`], holds a
//! NUL or another control character, a backslash, is absolute (`/x`, `C:x`), or has an empty, `.` or `..`
//! segment is refused for that item, by name. `/` separates segments: WebDataset keys such as `00012/000001`
//! name sub-folders. [`safe_join`] is the one way a key becomes a path, and it checks again.

use std::path::{Path, PathBuf};

/// The longest key accepted, in bytes (file systems allow 255 per segment, and 1,024 is ample for a path).
pub const MAX_KEY_BYTES: usize = 1024;

/// Whether `key` can be used; the error says why not.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        let head: String = key.chars().take(40).collect();
        return Err(format!("the key {head:?}… has {} bytes, over the limit of {MAX_KEY_BYTES}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(format!("the key {key:?} holds the control character {:?}", c));
    }
    if key.contains('\\') {
        return Err(format!("the key {key:?} holds a backslash (a path separator on Windows)"));
    }
    if key.starts_with('/') {
        return Err(format!("the key {key:?} is an absolute path"));
    }
    let bytes = key.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(format!("the key {key:?} starts with a drive letter"));
    }
    if let Some(segment) = key.split('/').find(|s| s.is_empty() || *s == "." || *s == "..") {
        let what =
            if segment.is_empty() { "an empty segment".to_string() } else { format!("a `{segment}` segment") };
        return Err(format!("the key {key:?} has {what}, so it could name a path outside its folder"));
    }
    Ok(())
}

/// `root` joined with the relative `name` (a key, perhaps with an extension added), or the reason it would not
/// stay inside `root`.
pub fn safe_join(root: &Path, name: &str) -> Result<PathBuf, String> {
    check_key(name)?;
    let mut path = root.to_path_buf();
    for segment in name.split('/') {
        path.push(segment);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_keys_are_refused() {
        for key in ["../../x", "/etc/x", "a/../../b", "C:\\x", "C:x", "a//b", "./a", "a/.", "", "a\0b", "a\nb"] {
            assert!(check_key(key).is_err(), "{key:?} was accepted");
        }
        assert!(check_key(&"k".repeat(5000)).is_err());
        for key in ["000001", "00012/000001", "a.b/c-d_e", "dog#1", "über"] {
            assert!(check_key(key).is_ok(), "{key:?} was refused");
        }
    }

    #[test]
    fn joined_paths_stay_inside_the_root() {
        let root = Path::new("out/images");
        assert_eq!(safe_join(root, "a/b.jpg").unwrap(), Path::new("out/images/a/b.jpg"));
        assert!(safe_join(root, "../escape.jpg").is_err());
        assert!(safe_join(root, "/abs/dir/ABS.jpg").is_err());
    }

    proptest! {
        #[test]
        fn an_accepted_key_never_climbs_out(key in "[a-z./\\\\:]{0,12}") {
            if check_key(&key).is_ok() {
                let joined = safe_join(Path::new("root"), &key).unwrap();
                prop_assert!(joined.starts_with("root"));
                prop_assert!(joined.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            }
        }
    }
}
