//! Embeds the front end (`static/`) in the binary, so one file is the whole
//! server. Generates `$OUT_DIR/assets.rs`: a sorted table of
//! `(relative path, bytes)` that `src/assets.rs` searches.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

fn main() -> io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    println!("cargo:rerun-if-changed={}", root.display());

    let mut files = Vec::new();
    if root.is_dir() {
        collect(&root, &root, &mut files)?;
    }
    files.sort();

    let mut out = String::from("pub static EMBEDDED: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        out.push_str(&format!("    ({rel:?}, include_bytes!({abs:?})),\n"));
    }
    out.push_str("];\n");

    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(dest.join("assets.rs"), out)
}

/// Every regular file below `dir`, as (path relative to `root` with `/`
/// separators, absolute path). Hidden files (editor swap files, `.DS_Store`)
/// are left out.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files)?;
        } else if path.is_file() {
            let rel = path.strip_prefix(root).expect("below root");
            let rel: Vec<_> = rel.iter().map(|c| c.to_string_lossy()).collect();
            files.push((rel.join("/"), path.display().to_string()));
        }
    }
    Ok(())
}
