//! The Quick start's run command on a machine that lacks what Pingora's build
//! needs: `bash run.sh` installs `cmake` first, then builds and runs. The
//! package manager and cargo are stand-ins that record how they were called,
//! on a PATH that holds nothing else, so nothing is installed or built here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory for PATH holding `bash`, `dirname` and `id` (root), plus
/// `apt-get` and `cargo` stand-ins that append their arguments to `calls`.
fn bare_path(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["bash", "dirname"] {
        let real = which(tool);
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    let calls = dir.join("calls");
    for (name, body) in [
        ("id", "echo 0".to_string()),
        (
            "apt-get",
            format!("echo \"apt-get $*\" >> {}", calls.display()),
        ),
        ("cargo", format!("echo \"cargo $*\" >> {}", calls.display())),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!{}\n{body}\n", which("bash").display())).unwrap();
        make_executable(&path);
    }
    bin
}

fn which(tool: &str) -> PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} not found"))
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run(script: &str, args: &[&str], path: &Path) -> (bool, String) {
    let out = Command::new(which("bash"))
        .arg(repo().join(script))
        .args(args)
        .env_clear()
        .env("PATH", path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn run_sh_installs_cmake_before_it_builds_on_a_machine_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = bare_path(dir.path());
    let (ok, output) = run("run.sh", &["check"], &path);
    assert!(ok, "{output}");
    let calls = calls(dir.path());
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[0].starts_with("apt-get update"), "{calls:?}");
    assert!(
        calls[1].starts_with("apt-get install") && calls[1].ends_with(" cmake"),
        "{calls:?}"
    );
    assert_eq!(calls[2], "cargo run --release --locked -- check");
}

#[test]
fn the_installer_leaves_present_commands_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = bare_path(dir.path());
    let (ok, output) = run(".ci/install", &["bash", "dirname"], &path);
    assert!(ok, "{output}");
    assert!(calls(dir.path()).is_empty(), "{:?}", calls(dir.path()));
}

#[test]
fn the_quick_start_runs_the_gateway_with_run_sh_and_tests_with_ci_run() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let quick_start = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|rest| rest.split("```sh").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("README has a Quick start with a sh block");
    let commands: Vec<&str> = quick_start
        .lines()
        .filter_map(|l| l.split('#').next())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands, ["bash run.sh", "bash .ci/run"]);
}
