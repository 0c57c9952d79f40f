use super::*;

const UPSTREAM_PASSWORD: &str = "Upstream-Pa55word";
const APP_PASSWORD: &str = "App-Pa55word";

fn with_secrets() -> DbProxyFileConfig {
    DbProxyFileConfig {
        upstream: Some(format!("mysql://dbproxy:{UPSTREAM_PASSWORD}@127.0.0.1:3306").into()),
        app_user: Some("app".into()),
        app_password: Some(APP_PASSWORD.into()),
        ..Default::default()
    }
}

#[test]
fn debug_of_the_file_config_and_the_checked_config_never_shows_a_password() {
    let file = with_secrets();
    let checked = file.check().unwrap();
    for shown in [
        format!("{file:?}"),
        format!("{file:#?}"),
        format!("{checked:?}"),
        format!("{checked:#?}"),
    ] {
        assert!(!shown.contains(UPSTREAM_PASSWORD), "{shown}");
        assert!(!shown.contains(APP_PASSWORD), "{shown}");
        assert!(
            shown.contains("grace_period"),
            "the rest is still there: {shown}"
        );
    }
    // The checked URL still says where the database is.
    assert!(format!("{checked:?}").contains("127.0.0.1"));
}
