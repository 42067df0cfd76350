//! `cargo test` runs every feature against the embedded mesh: started once, stopped after
//! (also on failure), reports in reports/RUN.

use std::path::Path;
use std::sync::Arc;

use meshtest::conformance::{RunOptions, run, runner};
use meshtest::local::{LocalMesh, LocalOptions};
use meshtest::target::local::LocalTarget;

fn main() -> std::process::ExitCode {
    meshtest::tls::install_crypto_provider();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let passed = rt.block_on(async {
        let mesh_dir = root
            .join("mesh/pyairtable")
            .canonicalize()
            .expect("mesh dir");
        let mesh = LocalMesh::start(&LocalOptions {
            mesh_dir: mesh_dir.clone(),
            envoy: None,
            // features/observability.feature queries the mesh's Prometheus.
            observe: true,
        })
        .await
        .expect("starting the embedded mesh");
        let target = Arc::new(LocalTarget::owning(mesh, &mesh_dir).expect("target"));
        let opts = RunOptions {
            features: vec![root.join("features")],
            tags: runner::default_tags(std::env::var("MESHTEST_TAGS").ok(), false),
            name: None,
            report_dir: root.join("reports").join(runner::run_id()),
            concurrency: 8,
        };
        let summary = run(target.clone(), &opts)
            .await
            .expect("running the features");
        summary.exit_code() == 0
        // `target` drops here: every Envoy and agent stops, pass or fail.
    });
    if passed {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
