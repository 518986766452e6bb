//! The front end's files: embedded in the binary at build time (see
//! `build.rs`), or read from a directory with `--static DIR`.
//!
//! [`resolve`] is the security boundary: it turns a URL path into a
//! relative file path made only of plain names, after percent-decoding
//! (RFC 3986 §2.1), so no spelling of `..`, `/`, `\` or NUL can climb out of
//! the root. On disk, the resolved file is also canonicalised and must still
//! be below the root, which catches symlinks that point outside.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::http::Response;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// Where the files come from.
pub enum Assets {
    Embedded,
    /// A canonical directory path.
    Disk(PathBuf),
}

/// Why a path got no file.
#[derive(Debug, PartialEq, Eq)]
pub enum AssetError {
    /// A path that tries to leave the root, or cannot name a file: `400`.
    BadPath,
    /// `404`.
    NotFound,
}

impl AssetError {
    pub fn response(&self) -> Response {
        match self {
            AssetError::BadPath => Response::error(400, "bad_request", "invalid path"),
            AssetError::NotFound => Response::error(404, "not_found", "no such file"),
        }
    }
}

impl Assets {
    /// Serves from `dir`, which must exist.
    pub fn from_dir(dir: &Path) -> std::io::Result<Assets> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(Assets::Disk(root))
    }

    /// The file for a URL path (`/` is `index.html`), with its type.
    pub fn get(&self, url_path: &str) -> Result<(&'static str, Cow<'static, [u8]>), AssetError> {
        let relative = resolve(url_path)?;
        // Hidden names (`.env`, `.git/config`, `.htpasswd`) are never
        // front-end files: build.rs leaves them out of the embedded copy,
        // and a `--static` directory may well hold them, with secrets.
        if relative.split('/').any(|name| name.starts_with('.')) {
            return Err(AssetError::NotFound);
        }
        let body = match self {
            Assets::Embedded => embedded::EMBEDDED
                .binary_search_by(|(name, _)| (*name).cmp(&relative))
                .map(|i| Cow::Borrowed(embedded::EMBEDDED[i].1))
                .map_err(|_| AssetError::NotFound)?,
            Assets::Disk(root) => Cow::Owned(read_below(root, &relative)?),
        };
        Ok((content_type(&relative), body))
    }
}

/// A URL path to a relative path of plain names joined by `/`.
pub fn resolve(url_path: &str) -> Result<String, AssetError> {
    let decoded = percent_decode(url_path).ok_or(AssetError::BadPath)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AssetError::BadPath)?;
    let path = decoded.strip_prefix('/').ok_or(AssetError::BadPath)?;
    // `/` and `/dir/` name a directory: serve its index.html.
    let (path, directory) = match path.strip_suffix('/') {
        Some(dir) => (dir, true),
        None => (path, path.is_empty()),
    };
    let mut names = Vec::new();
    for name in path.split('/').filter(|_| !path.is_empty()) {
        // Empty names (`//`, or a decoded `%2f` leading to one) and `.` are
        // refused rather than skipped: no well-formed link contains them.
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['\\', '\0', ':'])
            && !name.chars().any(char::is_control);
        if !plain {
            return Err(AssetError::BadPath);
        }
        names.push(name);
    }
    if directory {
        names.push("index.html");
    }
    Ok(names.join("/"))
}

/// Reads `root/relative`, refusing anything that resolves outside `root`.
fn read_below(root: &Path, relative: &str) -> Result<Vec<u8>, AssetError> {
    let real = root
        .join(relative)
        .canonicalize()
        .map_err(|_| AssetError::NotFound)?;
    if !real.starts_with(root) || !real.is_file() {
        return Err(AssetError::NotFound);
    }
    std::fs::read(&real).map_err(|_| AssetError::NotFound)
}

/// Decodes `%XX` escapes; `None` for a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// `Content-Type` by extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_resolve() {
        assert_eq!(resolve("/").as_deref(), Ok("index.html"));
        assert_eq!(resolve("/main.js").as_deref(), Ok("main.js"));
        assert_eq!(resolve("/img/a%20b.png").as_deref(), Ok("img/a b.png"));
    }

    #[test]
    fn escapes_in_any_spelling_are_refused() {
        for path in [
            "/..",
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E%2Fetc",
            "/..%2f..%2fetc",
            "/a%2f..%2f..%2fx",
            "/..\\x",
            "/%5c..%5cx",
            "/a%00.html",
            "//etc/passwd",
            "/%2fetc/passwd",
            "/C:/x",
            "/%zz",
            "/%",
            "etc/passwd",
            "/./x",
            "/%c0%ae%c0%ae/x",
        ] {
            assert_eq!(resolve(path), Err(AssetError::BadPath), "{path}");
        }
    }

    #[test]
    fn types_follow_extensions() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a.PNG"), "image/png");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
