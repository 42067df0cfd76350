//! The mesh's own thread: a current-thread Tokio runtime that runs the agents and spawns the
//! Envoys. Children get PR_SET_PDEATHSIG from the *thread* that forked them, so spawning from a
//! thread that lives exactly as long as the mesh (not a test's or a pool's thread) is what
//! makes them die with the mesh, and with the process even on SIGKILL.

use std::future::Future;

use anyhow::{Result, anyhow};
use tokio::sync::oneshot;

pub struct MeshThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl MeshThread {
    pub fn start() -> Result<MeshThread> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name("meshtest-mesh".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async move {
                    let _ = stop_rx.await;
                });
                rt.shutdown_background();
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| anyhow!("mesh thread died"))??;
        Ok(MeshThread {
            handle,
            stop: Some(stop),
            join: Some(join),
        })
    }

    /// Runs `fut` on the mesh thread in the background, until it ends or the mesh stops.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(fut));
    }

    /// Runs `fut` on the mesh thread and waits for its result.
    pub async fn run<F, T>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .map_err(|e| anyhow!("mesh thread task failed: {e}"))
    }
}

impl Drop for MeshThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}
