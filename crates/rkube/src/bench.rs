pub async fn run(_c: BenchCommand) -> anyhow::Result<()> {
    Ok(())
}
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    Datastore,
}
