pub async fn run(_s: crate::app::AppState, _stop: tokio::sync::watch::Receiver<bool>) {}
