//! What one user may see of another: a short public name, never the email.

use crate::helpers::spawn_app;

#[tokio::test]
async fn anyone_sees_a_users_display_name_but_not_the_email() {
    let app = spawn_app().await;
    let user = app.register("ann.lee@example.com", "correct horse").await;
    let id = user.data(201)["id"].as_str().unwrap().to_owned();

    let reply = app.get(&format!("/api/v1/users/{id}/name"), None).await;
    let data = reply.data(200);
    assert_eq!(data["display_name"], "ann.lee");
    assert_eq!(data["id"], id.as_str());
    assert!(!reply.body.to_string().contains("example.com"), "{}", reply.body);

    let unknown = uuid::Uuid::now_v7();
    app.get(&format!("/api/v1/users/{unknown}/name"), None).await.error(404, "NOT_FOUND", None);
}
