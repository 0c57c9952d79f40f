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

const KEY_HEX: &str = "00112233445566778899aabbccddeeff0f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn masking_hash(config: &DbProxyFileConfig) -> Vec<u8> {
    let checked = config.check().unwrap();
    let masking = checked.masking.expect("masking is on");
    let strategy = crate::mask::strategy::MaskStrategy::Hash;
    masking
        .masker
        .mask(&strategy, b"alice@corp.com", None)
        .unwrap()
}

fn masked_email(secret: Option<&str>, secret_file: Option<PathBuf>) -> DbProxyFileConfig {
    let mut c = with_secrets();
    c.masking.secret = secret.map(Secret::from);
    c.masking.secret_file = secret_file;
    c.masking
        .columns
        .insert("shop.users.email".into(), "hash".into());
    c
}

#[test]
fn an_inline_masking_secret_is_the_key_a_secret_file_with_those_bytes_would_be() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mask.key");
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&KEY_HEX[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    let inline = masking_hash(&masked_email(Some(KEY_HEX), None));
    assert_eq!(inline, masking_hash(&masked_email(None, Some(file))));
    // Upper-case hex is the same key; another key masks differently.
    let upper = KEY_HEX.to_uppercase();
    assert_eq!(inline, masking_hash(&masked_email(Some(&upper), None)));
    let other = KEY_HEX.replace("00", "01");
    assert_ne!(inline, masking_hash(&masked_email(Some(&other), None)));
    // Nothing was written for the inline key.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn the_inline_masking_secret_is_never_shown_by_debug() {
    let config = masked_email(Some(KEY_HEX), None);
    let checked = config.check().unwrap();
    let shown = format!("{config:?} {config:#?} {checked:?}");
    assert!(!shown.contains(KEY_HEX), "{shown}");
    assert!(!shown.contains(&KEY_HEX[..16]), "{shown}");
}

#[test]
fn a_masking_secret_inline_and_in_a_file_at_once_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = masked_email(Some(KEY_HEX), Some(dir.path().join("mask.key")));
    let e = c.check().unwrap_err();
    assert!(e.contains("secret") && e.contains("secret_file"), "{e}");
    assert!(e.contains("not both"), "{e}");
}

#[test]
fn a_malformed_inline_masking_secret_is_refused_without_quoting_it() {
    for bad in [
        "too-short",
        "a passphrase that is long enough but is not hexadecimal at all",
        &KEY_HEX[..62],
        &format!("{KEY_HEX}00"),
        &KEY_HEX.replace('a', "g"),
    ] {
        let e = masked_email(Some(bad), None).check().unwrap_err();
        assert!(e.contains("masking.secret"), "{e}");
        assert!(e.contains("64 hexadecimal digits"), "{e}");
        assert!(!e.contains(bad), "the error quotes the secret: {e}");
    }
    // Checked even when no column is masked yet.
    let mut c = with_secrets();
    c.masking.secret = Some("nope".into());
    assert!(c.check().is_err());
}
