//! Small files beside the log that must survive a crash whole: the node's id, the
//! cluster's id, the peers seen holding state, the members' levels.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one,
/// never a mix: the new file is synced before it replaces the old, and the directory
/// after, so the rename itself is on disk before the caller relies on it.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kept");
        super::replace_file(&path, b"one\n").expect("first");
        super::replace_file(&path, b"two\n").expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"two\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("list").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kept")]);
    }
}
