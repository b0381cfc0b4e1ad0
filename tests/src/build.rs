//! Building the kernel image.

use crate::Error;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The target the kernel image is built for.
pub const TARGET: &str = "aarch64-unknown-none";

/// Build the kernel image (release) with `features`, and return the path of a private copy of
/// it for booting.
///
/// Uses the cargo that runs the harness (`$CARGO`) with the same target directory, so an
/// image built by scripts/run is reused. Each feature set gets its own copy under
/// `<target-dir>/harness/`: a concurrent build with other features (the self-test image) then
/// cannot swap the image under a run.
pub fn build_kernel(root: &Path, features: &[&str]) -> Result<PathBuf, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build", "-p", "kernel", "--bin", "kernel", "--target", TARGET,
        ])
        .args(["--release", "--message-format=json-render-diagnostics"]);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    // Diagnostics and progress go to the terminal; the JSON messages come back on stdout.
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::io("running cargo build for the kernel", e))?;
    if !out.status.success() {
        return Err(Error::Build(out.status));
    }
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(kernel_executable)
        .next_back()
        .ok_or(Error::NoArtifact)?;

    // <target-dir>/<triple>/release/kernel -> <target-dir>/harness/kernel-<features>
    let target_dir = built
        .ancestors()
        .nth(3)
        .ok_or_else(|| Error::UnexpectedArtifactPath(built.clone()))?;
    let dir = target_dir.join("harness");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tag = if features.is_empty() {
        "default".to_string()
    } else {
        features.join("+")
    };
    let copy = dir.join(format!("kernel-{tag}"));
    std::fs::copy(&built, &copy).map_err(|e| {
        Error::io(
            format!("copying {} to {}", built.display(), copy.display()),
            e,
        )
    })?;
    Ok(copy)
}

/// The `executable` of a cargo `compiler-artifact` message for the kernel binary.
fn kernel_executable(message: &str) -> Option<PathBuf> {
    if !message.contains(r#""reason":"compiler-artifact""#)
        || !message.contains(r#""kind":["bin"]"#)
        || !message.contains(r#""name":"kernel""#)
    {
        return None;
    }
    json_string_field(message, "executable").map(PathBuf::from)
}

/// The value of a string field `"key":"..."` in a one-line JSON object (no dependency on a
/// JSON crate: cargo's messages are compact, and only this one field is needed).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_kernel_executable() {
        let msg = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/kernel#0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"kernel","src_path":"/w/kernel/src/main.rs"},"profile":{},"features":[],"filenames":["/w/target/aarch64-unknown-none/release/kernel"],"executable":"/w/target/aarch64-unknown-none/release/kernel","fresh":true}"#;
        assert_eq!(
            kernel_executable(msg),
            Some(PathBuf::from(
                "/w/target/aarch64-unknown-none/release/kernel"
            ))
        );
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"kernel"},"executable":null}"#;
        assert_eq!(kernel_executable(lib), None);
        assert_eq!(
            kernel_executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }

    #[test]
    fn json_string_escapes() {
        assert_eq!(
            json_string_field(r#"{"a":"x\"y\\z\u0041","b":1}"#, "a").as_deref(),
            Some("x\"y\\zA")
        );
        assert_eq!(json_string_field(r#"{"a":null}"#, "a"), None);
        assert_eq!(json_string_field(r#"{"a":"unterminated"#, "a"), None);
    }
}
