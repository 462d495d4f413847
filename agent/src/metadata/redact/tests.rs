use super::*;

const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl";

fn line(args: &[&str]) -> Vec<String> {
    command_line(args.iter().map(|a| (*a).to_owned()).collect())
}

#[test]
fn curl_with_a_bearer_header_keeps_the_scheme_and_loses_the_token() {
    let out = line(&["curl", "-H", &format!("Authorization: Bearer {JWT}"), "https://10.96.0.1/api"]);
    assert_eq!(out, ["curl", "-H", "Authorization: Bearer [REDACTED]", "https://10.96.0.1/api"]);
    // Not JWT-shaped: the scheme still gives it away, in any case.
    assert_eq!(redact("authorization:bearer opaque-123"), "authorization:bearer [REDACTED]");
    assert_eq!(redact("x-auth: BEARER abc.def"), "x-auth: BEARER [REDACTED]");
    assert_eq!(redact("Authorization: Basic dXNlcjpwYXNz"), "Authorization: Basic [REDACTED]");
    assert_eq!(redact("Authorization: s3cr3t"), "Authorization: [REDACTED]");
}

#[test]
fn kubectl_token_flags_in_both_spellings() {
    let out = line(&["kubectl", "--token", "opaque-not-a-jwt", "get", "pods"]);
    assert_eq!(out, ["kubectl", "--token", REDACTED, "get", "pods"]);
    let out = line(&["kubectl", "--token=opaque-not-a-jwt", "--server=https://api:6443", "get", "secrets"]);
    assert_eq!(out, ["kubectl", "--token=[REDACTED]", "--server=https://api:6443", "get", "secrets"]);
    assert_eq!(line(&["vault", "login", "-client-secret", "x"]), ["vault", "login", "-client-secret", REDACTED]);
}

#[test]
fn key_values_from_the_environment_urls_and_configs() {
    assert_eq!(redact("TOKEN=abc123"), "TOKEN=[REDACTED]");
    assert_eq!(redact("DB_PASSWORD=hunter2"), "DB_PASSWORD=[REDACTED]");
    assert_eq!(redact("https://h/api?access_token=abc&watch=1"), "https://h/api?access_token=[REDACTED]&watch=1");
    assert_eq!(redact("password: hunter2"), "password: [REDACTED]");
    assert_eq!(redact("--api-key=k"), "--api-key=[REDACTED]");
    assert_eq!(redact("postgres://app:hunter2@db:5432/x"), "postgres://app:[REDACTED]@db:5432/x");
    assert_eq!(redact(&format!("sh -c echo {JWT} | base64 -d")), "sh -c echo [REDACTED] | base64 -d");
}

#[test]
fn paths_names_and_ordinary_words_are_kept() {
    let kept = [
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "--token-file=/var/run/secrets/tokens/vault-token",
        "--token=/var/run/secrets/tokens/vault-token",
        "create",
        "token",
        "my-service-account",
        "https://kubernetes.default.svc:443/api/v1/namespaces",
        "eyJust-a-word",
        "keyJWT.x",
    ];
    assert_eq!(line(&kept), kept);
}

#[test]
fn long_arguments_and_long_lines_are_cut_and_say_so() {
    let long = "a".repeat(MAX_ARG_BYTES + 10);
    let out = line(&["echo", &long]);
    assert_eq!(out[1], format!("{}…[+10 bytes]", "a".repeat(MAX_ARG_BYTES)));
    let many: Vec<String> = (0..100).map(|i| format!("{i:0>99}")).collect();
    let out = command_line(many);
    let kept: usize = out.iter().map(String::len).sum();
    assert!(kept <= MAX_ARGS_BYTES + 32, "{kept} bytes kept");
    assert_eq!(out.last().map(String::as_str), Some("[+59 args cut]"));
    // 41 arguments of 99 bytes fit; the other 59 are counted.
    // A cut never splits a character.
    let wide = "é".repeat(MAX_ARG_BYTES);
    assert!(line(&[&wide])[0].ends_with(&format!("…[+{} bytes]", MAX_ARG_BYTES)));
    // 2048 - 1024
}

#[test]
fn a_secret_is_redacted_before_any_cut() {
    // The token straddles the cut: it must not survive in part.
    let arg = format!("{}Bearer {JWT}", "x".repeat(MAX_ARG_BYTES - 20));
    let out = line(&[&arg]);
    assert!(!out[0].contains("eyJ"), "{}", out[0]);
    assert!(!out[0].contains(&JWT[..10]));
}

#[test]
fn quoted_json_and_shell_values_are_redacted_inside_their_quotes() {
    assert_eq!(redact(r#"{"password":"hunter2","user":"bob"}"#), r#"{"password":"[REDACTED]","user":"bob"}"#);
    assert_eq!(redact(r#"{"token": "x y z"}"#), r#"{"token": "[REDACTED]"}"#);
    assert_eq!(redact("TOKEN='abc def'"), "TOKEN='[REDACTED]'");
    assert_eq!(redact(r#"--password="s3cr3t""#), r#"--password="[REDACTED]""#);
    // Outside a URL's query, a value runs to the end of its word.
    assert_eq!(redact("--password=ab,cd;ef"), "--password=[REDACTED]");
}

#[test]
fn any_authorization_header_loses_all_of_its_credential() {
    assert_eq!(redact("Authorization: SSWS 00abc"), "Authorization: [REDACTED]");
    assert_eq!(
        redact("Authorization: AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=abcd"),
        "Authorization: [REDACTED]"
    );
    assert_eq!(
        redact("sh -c curl -H 'Authorization: Basic dXNlcg==' x"),
        "sh -c curl -H 'Authorization: Basic [REDACTED]' x"
    );
    assert_eq!(redact("Bearer\tabc"), "Bearer\t[REDACTED]");
    assert_eq!(redact("X-Auth-Token: opaque"), "X-Auth-Token: [REDACTED]");
    assert_eq!(redact("Cookie: session=abc"), "Cookie: [REDACTED]");
}

#[test]
fn credential_flags_of_common_tools() {
    assert_eq!(line(&["curl", "-u", "admin:hunter2", "x"]), ["curl", "-u", "admin:[REDACTED]", "x"]);
    assert_eq!(line(&["curl", "--oauth2-bearer", "t"]), ["curl", "--oauth2-bearer", "[REDACTED]"]);
    assert_eq!(line(&["openssl", "-passin", "pass:pw"]), ["openssl", "-passin", "[REDACTED]"]);
    assert_eq!(redact("AWS_SECRET_ACCESS_KEY=wJalr"), "AWS_SECRET_ACCESS_KEY=[REDACTED]");
    assert_eq!(redact("--secret-access-key=wJalr"), "--secret-access-key=[REDACTED]");
    assert_eq!(redact("https://acct.blob/c?sv=1&sig=abc%3D&se=2"), "https://acct.blob/c?sv=1&sig=[REDACTED]&se=2");
    assert_eq!(redact("X-Amz-Signature=abc"), "X-Amz-Signature=[REDACTED]");
    assert_eq!(redact("--auth=user:pw"), "--auth=[REDACTED]");
    // Not secrets: a bypass flag, an OAuth client's name.
    assert_eq!(redact("--bypass=yes --oauth=github"), "--bypass=yes --oauth=github");
}

#[test]
fn a_flag_and_its_value_inside_one_argument() {
    assert_eq!(redact("kubectl --token hvs.abc get pods"), "kubectl --token [REDACTED] get pods");
    assert_eq!(redact("curl -u admin:pw https://x"), "curl -u admin:[REDACTED] https://x");
    assert_eq!(redact("vault login -method=token token=hvs.x"), "vault login -method=token token=[REDACTED]");
}

#[test]
fn a_token_used_as_a_urls_user_name() {
    let url = "https://ghp_0123456789abcdefABCDEF@github.com/o/r.git";
    assert_eq!(redact(url), "https://[REDACTED]@github.com/o/r.git");
    assert_eq!(redact("ssh://git@github.com/o/r"), "ssh://git@github.com/o/r", "a short user name is kept");
}
