//! Item keys: what makes one acceptable, and how one becomes a file path that stays inside a folder.
//!
//! Keys come from input the job does not control (tar member names, manifest fields, Parquet columns, COCO file
//! names), and later become file names (`export`, `render`) and the `image` of conversations. So every key a
//! source emits is checked here first ([`check_key`]): a key that is empty, longer than [`MAX_KEY_BYTES`], holds a
//! NUL or another control character, a backslash, is absolute (`/x`, `C:x`), or has an empty, `.` or `..`
//! segment is refused for that item, by name. `/` separates segments: WebDataset keys such as `00012/000001`
//! name sub-folders. [`safe_join`] is the one way a key becomes a path: it checks again, and gives each segment a
//! name every file system takes ([`file_path`]).

use std::path::{Path, PathBuf};

/// The longest key accepted, in bytes (1,024 is ample for a path; segments longer than a file name may be are
/// shortened when they become one, by [`file_path`]).
pub const MAX_KEY_BYTES: usize = 1024;

/// The longest file name, in bytes, that [`file_path`] gives a segment: what ext4, XFS, Btrfs and ZFS allow (APFS
/// and NTFS count 255 characters, which 255 bytes of UTF-8 never exceed).
pub const MAX_NAME_BYTES: usize = 255;

/// What a name joined by [`safe_join`] may add to a key: an extension such as `.jpg`.
const MAX_EXTENSION_BYTES: usize = 16;

/// Hex digits of the SHA-256 that mark a shortened segment (128 bits).
const DIGEST_HEX: usize = 32;

/// Whether `key` can be used; the error says why not.
pub fn check_key(key: &str) -> Result<(), String> {
    check_name(key, MAX_KEY_BYTES)
}

/// Whether `name` is a relative path of at most `limit` bytes that stays inside any folder it is joined to.
fn check_name(key: &str, limit: usize) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > limit {
        let head: String = key.chars().take(40).collect();
        return Err(format!("the key {head:?}… has {} bytes, over the limit of {limit}", key.len()));
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

/// `root` joined with the relative `name` (a key, perhaps with an extension added), its segments named as
/// [`file_path`] names them, or the reason it would not stay inside `root`.
pub fn safe_join(root: &Path, name: &str) -> Result<PathBuf, String> {
    check_name(name, MAX_KEY_BYTES + MAX_EXTENSION_BYTES)?;
    let mut path = root.to_path_buf();
    for segment in file_path(name).split('/') {
        path.push(segment);
    }
    Ok(path)
}

/// `name` (a checked key, perhaps with an extension added) as a relative file path every file system takes: a
/// segment longer than [`MAX_NAME_BYTES`] becomes its first bytes, `~`, and 32 hex digits of its SHA-256, with its
/// extension kept (`kkk…k~3f2a….jpg`). The same name always gives the same path, and distinct names distinct
/// paths: a segment that already ends the way a shortened one does is given its own digest too, so no key can
/// take another's shortened name. Every other segment is kept as it is.
pub fn file_path(name: &str) -> String {
    name.split('/').map(file_name).collect::<Vec<_>>().join("/")
}

/// One segment of [`file_path`].
fn file_name(segment: &str) -> std::borrow::Cow<'_, str> {
    let (stem, extension) = split_extension(segment);
    if segment.len() <= MAX_NAME_BYTES && !looks_shortened(stem) {
        return segment.into();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, segment.as_bytes());
    let digest = hex::encode(&digest.as_ref()[..DIGEST_HEX / 2]);
    let mut keep = MAX_NAME_BYTES - 1 - DIGEST_HEX - extension.len();
    while !stem.is_char_boundary(keep.min(stem.len())) {
        keep -= 1;
    }
    format!("{}~{digest}{extension}", &stem[..keep.min(stem.len())]).into()
}

/// `segment` as stem and extension (with its dot; empty when there is none, or when what follows the last dot is
/// too long to be one).
fn split_extension(segment: &str) -> (&str, &str) {
    match segment.rfind('.') {
        Some(dot) if dot > 0 && segment.len() - dot <= MAX_EXTENSION_BYTES => segment.split_at(dot),
        _ => (segment, ""),
    }
}

/// Whether `stem` ends as a shortened segment's does: `~` and the digest's hex digits.
fn looks_shortened(stem: &str) -> bool {
    let bytes = stem.as_bytes();
    bytes.len() > DIGEST_HEX
        && bytes[bytes.len() - DIGEST_HEX - 1] == b'~'
        && bytes[bytes.len() - DIGEST_HEX..].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
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

    #[test]
    fn long_segments_become_short_distinct_file_names() {
        let long = "k".repeat(300);
        let name = file_path(&format!("{long}.jpg"));
        assert_eq!(name.len(), MAX_NAME_BYTES);
        assert!(name.starts_with("kkk") && name.ends_with(".jpg") && looks_shortened(&name[..name.len() - 4]));
        assert_eq!(file_path(&format!("{long}.jpg")), name, "deterministic");
        assert_ne!(file_path(&format!("{long}x.jpg")), name, "a longer key of the same first bytes differs");
        // A key spelled as another's shortened name is shortened in turn.
        let spelled = name.trim_end_matches(".jpg").to_string();
        let taken = file_path(&format!("{spelled}.jpg"));
        assert_ne!(taken, name);
        assert!(looks_shortened(taken.trim_end_matches(".jpg")));
        // Segments are shortened one by one; short ones and their extensions are kept.
        let nested = file_path(&format!("{}/{}/short.png", "d".repeat(256), "e".repeat(255)));
        let parts: Vec<&str> = nested.split('/').collect();
        assert_eq!((parts[0].len(), parts[1], parts[2]), (MAX_NAME_BYTES, "e".repeat(255).as_str(), "short.png"));
        assert_eq!(file_path("00012/000001.webp"), "00012/000001.webp");
        // Multi-byte characters are never cut.
        let wide = file_path(&format!("{}.png", "ü".repeat(200)));
        assert!(wide.len() <= MAX_NAME_BYTES && wide.ends_with(".png"), "{wide}");
        // What follows a dot far from the end is no extension.
        let dotted = file_path(&format!("a.{}", "b".repeat(300)));
        assert!(dotted.len() <= MAX_NAME_BYTES && dotted.starts_with("a.bbb"));
    }

    #[test]
    fn a_key_of_the_longest_length_joins_with_its_extension() {
        let key = ["a".repeat(255), "b".repeat(255), "c".repeat(255), "d".repeat(256)].join("/");
        assert_eq!(key.len(), MAX_KEY_BYTES);
        let path = safe_join(Path::new("root"), &format!("{key}.jpg")).unwrap();
        assert!(path.components().all(|c| c.as_os_str().len() <= MAX_NAME_BYTES), "{}", path.display());
        assert!(safe_join(Path::new("root"), &format!("{key}/{}", "x".repeat(40))).is_err());
    }

    proptest! {
        #[test]
        fn file_names_fit_and_never_collide(a in "[a-f~0-9./]{1,300}", b in "[a-f~0-9./]{1,300}") {
            if check_key(&a).is_ok() && check_key(&b).is_ok() {
                let (fa, fb) = (file_path(&a), file_path(&b));
                prop_assert!(fa.split('/').all(|s| !s.is_empty() && s.len() <= MAX_NAME_BYTES));
                prop_assert_eq!(a == b, fa == fb);
            }
        }

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
