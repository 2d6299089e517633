fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_build::configure()
        // Deterministic iteration everywhere a map reaches a decision.
        .btree_map(["."])
        .compile_protos(
            &["proto/warren/v1/warren.proto", "proto/warren/v1/internal.proto"],
            &["proto"],
        )?;
    // The commit this binary is built from (`warren version`); "unknown" outside a git
    // checkout. WARREN_BUILD_ID, if set, labels a build (the upgrade test builds twice).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WARREN_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=WARREN_BUILD_ID");
    for f in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    Ok(())
}
