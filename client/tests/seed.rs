//! The seed's Rust snippets (shared/seed/service-provisioning.md), as
//! written modulo their `/* ... */` placeholders, must compile without
//! warnings: clippy runs with `-D warnings` over this file.

#[derive(Debug)]
struct HandlerError;

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("handler failed")
    }
}

async fn deploy_handler(_input: hadron::StageInput) -> Result<hadron::NewEvent, HandlerError> {
    Ok(hadron::NewEvent::default())
}
async fn billing_handler(_input: hadron::StageInput) -> Result<hadron::NewEvent, HandlerError> {
    Err(HandlerError)
}
async fn monitoring_handler(input: hadron::StageInput) -> Result<hadron::NewEvent, HandlerError> {
    Ok(input.root.to_new_event())
}
async fn notify_handler(_input: hadron::StageInput) -> Result<hadron::NewEvent, HandlerError> {
    Ok(hadron::NewEvent::new("user.notified", Vec::new()))
}

#[expect(dead_code, reason = "compiled, not run: it needs a server")]
async fn seed() -> Result<(), hadron::Error> {
    // Event producer which publishes events to stream `events`.
    let client = hadron::Client::new("http://events.default:7000", Default::default())?;
    let publisher = client.publisher("example-cloud-app").await?;

    // Publish a new event based on some application logic.
    let event = hadron::NewEvent {
        ty: "service.created".into(),
        ..Default::default()
    };
    publisher.publish(event).await?;

    // Process Pipeline stage `deploy-service`.
    client.pipeline("service-creation", "deploy-service", deploy_handler);

    client
        .pipeline("service-creation", "setup-billing", billing_handler)
        .await?;
    client
        .pipeline("service-creation", "setup-monitoring", monitoring_handler)
        .await?;
    client
        .pipeline("service-creation", "notify-user", notify_handler)
        .await?;
    Ok(())
}
