//! `meshtest derive`: write the features a mesh's own policies promise.

use std::path::PathBuf;

use anyhow::Result;

use crate::error::{InputError, exit};
use crate::manifest::Manifests;
use crate::model::MeshModel;

#[derive(clap::Args)]
pub struct DeriveArgs {
    /// The mesh's manifests (a directory of Kubernetes + Istio YAML).
    #[arg(long, default_value = "mesh/pyairtable")]
    mesh: PathBuf,
    /// Where to write the features (created if missing; the derived files are replaced).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: DeriveArgs) -> Result<u8> {
    let manifests = Manifests::load_dir(&a.mesh)?;
    let model = MeshModel::build(manifests)?;
    crate::translate::proxy::check(&model)?;
    if a.out.is_file() {
        return Err(InputError::new(&a.out, "--out names a file; give a directory").into());
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| InputError::new(&a.out, format!("cannot create --out: {e}")))?;
    let features = crate::derive::features(&model, &a.mesh.display().to_string());
    if features.is_empty() {
        println!("meshtest derive: the mesh declares nothing to derive a promise from");
        return Ok(exit::OK);
    }
    for f in &features {
        let path = a.out.join(&f.file);
        std::fs::write(&path, &f.text)
            .map_err(|e| InputError::new(&path, format!("cannot write: {e}")))?;
        println!(
            "meshtest derive: {} ({} scenarios)",
            path.display(),
            f.scenarios
        );
    }
    println!(
        "meshtest derive: run them with `meshtest run --mesh {} {}`",
        a.mesh.display(),
        a.out.display()
    );
    Ok(exit::OK)
}
