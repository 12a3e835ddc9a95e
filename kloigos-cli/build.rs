//! Records the git commit for `kloigos --version`: `KLOIGOS_GIT_COMMIT`
//! from the environment if set (a packager building from a tarball),
//! else the commit of the git checkout this workspace *is* (not of some
//! repository it happens to sit inside), else "unknown commit" (a source
//! tree without .git, or no git installed).
use std::path::{Path, PathBuf};
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KLOIGOS_GIT_COMMIT");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().unwrap_or(&manifest).to_path_buf();
    let from_env = std::env::var("KLOIGOS_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let ours = git(&root, &["rev-parse", "--show-toplevel"])
        .and_then(|top| std::fs::canonicalize(top).ok())
        .is_some_and(|top| std::fs::canonicalize(&root).is_ok_and(|r| r == top));
    let commit = from_env
        .or_else(|| {
            ours.then(|| git(&root, &["rev-parse", "--short=12", "HEAD"]))
                .flatten()
        })
        .unwrap_or_else(|| "unknown commit".into());
    println!("cargo:rustc-env=KLOIGOS_GIT_COMMIT={commit}");
    // Watch only files that exist: a missing path would rerun this script
    // on every build.
    if ours {
        if let Some(dir) = git(&root, &["rev-parse", "--absolute-git-dir"]) {
            let dir = PathBuf::from(dir);
            for f in ["HEAD", "packed-refs", "refs/heads"] {
                if dir.join(f).exists() {
                    println!("cargo:rerun-if-changed={}", dir.join(f).display());
                }
            }
        }
    }
}
