fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_build::configure()
        // Deterministic iteration everywhere a map reaches a decision.
        .btree_map(["."])
        .compile_protos(
            &["proto/warren/v1/warren.proto", "proto/warren/v1/internal.proto"],
            &["proto"],
        )?;
    Ok(())
}
