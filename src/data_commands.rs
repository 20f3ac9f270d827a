//! (being written) the data engineer's commands: generate, ingest, reindex, demo.
use clap::Args;

#[derive(Args, Debug)]
pub struct GenerateArgs {}
#[derive(Args, Debug)]
pub struct IngestArgs {}
#[derive(Args, Debug)]
pub struct DemoArgs {}

pub fn generate(_args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub async fn ingest(_args: IngestArgs, _global: &crate::Global) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub async fn reindex(_global: &crate::Global) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub async fn demo(_args: DemoArgs, _global: &crate::Global) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
