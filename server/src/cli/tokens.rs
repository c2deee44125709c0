//! `hadron token create | list | revoke`: token management, which needs a
//! token with `admin` (`HADRON_TOKEN`). The secret of a new token is drawn
//! here, by the client crate, and only its SHA-256 goes to the server.

use hadron::TokenScope;

use super::connect;

/// `hadron token create NAME`: prints the secret alone on standard output
/// (so `$(hadron token create ...)` captures it), and a note on standard
/// error. The secret is shown this once; the server keeps only its hash.
pub async fn create(url: &str, name: &str, scope: TokenScope) -> Result<(), String> {
    let client = connect(url)?;
    let secret = client
        .create_token(name, &scope)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "token/{name} created; its secret follows, shown only now (the server keeps only its SHA-256):"
    );
    println!("{secret}");
    Ok(())
}

/// `hadron token list`: one line per token, its name and scope.
pub async fn list(url: &str) -> Result<(), String> {
    let client = connect(url)?;
    let tokens = client.list_tokens().await.map_err(|e| e.to_string())?;
    for token in tokens {
        println!("{}", describe(&token.name, &token.scope));
    }
    Ok(())
}

/// `hadron token revoke NAME`.
pub async fn revoke(url: &str, name: &str) -> Result<(), String> {
    let client = connect(url)?;
    for line in client.revoke_token(name).await.map_err(|e| e.to_string())? {
        println!("{line}");
    }
    Ok(())
}

/// `NAME: all, publish [a, b], subscribe [*], admin` (what is granted).
fn describe(name: &str, scope: &TokenScope) -> String {
    let mut grants = Vec::new();
    if scope.all {
        grants.push("all".to_owned());
    }
    if !scope.publish.is_empty() {
        grants.push(format!("publish [{}]", scope.publish.join(", ")));
    }
    if !scope.subscribe.is_empty() {
        grants.push(format!("subscribe [{}]", scope.subscribe.join(", ")));
    }
    if scope.admin {
        grants.push("admin".to_owned());
    }
    if grants.is_empty() {
        grants.push("nothing (status and metadata only)".to_owned());
    }
    format!("{name}: {}", grants.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_token_shows_its_grants() {
        let scope = TokenScope {
            publish: vec!["events".into(), "orders".into()],
            subscribe: vec!["*".into()],
            admin: true,
            ..TokenScope::default()
        };
        assert_eq!(
            describe("ops", &scope),
            "ops: publish [events, orders], subscribe [*], admin"
        );
        assert_eq!(
            describe("none", &TokenScope::default()),
            "none: nothing (status and metadata only)"
        );
    }
}
