//! The admin page (`/admin`) and the storefront widget (`/widget.js`):
//! plain HTML, CSS and JavaScript from `server/assets/`, embedded in the
//! binary with `include_str!`, so there is no CDN and no build step.
//!
//! These are pages, not API: they need no key to load (they hold no data;
//! every call they make carries the user's key from session storage) and
//! they are not in the OpenAPI document. `router` is built apart from the
//! API router for that reason, and `app.rs` merges it in.
//!
//! Every asset answers with its content type, `Cache-Control: no-cache` and
//! a strong ETag of its bytes, so a browser revalidates each load with
//! `If-None-Match` and gets a bodiless 304 until the binary changes. The
//! scripts a storefront loads from another origin (`widget.js` and the
//! client module it imports) also answer `Access-Control-Allow-Origin: *`:
//! they are public, and a cross-origin module import needs it. The admin
//! page sends a Content-Security-Policy that allows scripts, styles and
//! requests to this origin only.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::problem::Problem;

/// One embedded file.
struct Asset {
    /// Its name under `/ui/`, or its own route's name for the entry points.
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// Whether pages of other origins may load it (the widget's scripts).
    cross_origin: bool,
}

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

const ADMIN_PAGE: Asset = Asset {
    name: "admin.html",
    content_type: HTML,
    body: include_str!("../../assets/admin.html"),
    cross_origin: false,
};
const WIDGET: Asset = Asset {
    name: "widget.js",
    content_type: JAVASCRIPT,
    body: include_str!("../../assets/widget.js"),
    cross_origin: true,
};

/// What `/ui/{name}` serves.
const UI_ASSETS: [Asset; 4] = [
    Asset {
        name: "api-client.js",
        content_type: JAVASCRIPT,
        body: include_str!("../../assets/api-client.js"),
        cross_origin: true,
    },
    Asset {
        name: "admin.js",
        content_type: JAVASCRIPT,
        body: include_str!("../../assets/admin.js"),
        cross_origin: false,
    },
    Asset { name: "admin.css", content_type: CSS, body: include_str!("../../assets/admin.css"), cross_origin: false },
    Asset {
        name: "favicon.svg",
        content_type: SVG,
        body: include_str!("../../assets/favicon.svg"),
        cross_origin: false,
    },
];

/// The admin page may load and call this origin only; nothing may frame it
/// (the key it holds is worth a clickjacking attempt).
const ADMIN_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The pages and scripts, for any router state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/admin", get(admin)).route("/widget.js", get(widget)).route("/ui/{name}", get(ui_asset))
}

/// `GET /admin`: the admin page.
async fn admin(headers: HeaderMap) -> Response {
    let mut response = serve(&ADMIN_PAGE, &headers);
    let page_headers = response.headers_mut();
    page_headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(ADMIN_CSP));
    page_headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    page_headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /widget.js`: the storefront stock badge.
async fn widget(headers: HeaderMap) -> Response {
    serve(&WIDGET, &headers)
}

/// `GET /ui/{name}`: the admin page's script and style, the API client.
async fn ui_asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match UI_ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(asset, &headers),
        None => Problem::not_found("not_found", format!("no asset {name:?} under /ui/")).into_response(),
    }
}

/// Strong ETags of every asset, by name: a hash of the bytes, made once.
static ETAGS: LazyLock<Vec<(&'static str, HeaderValue)>> = LazyLock::new(|| {
    UI_ASSETS
        .iter()
        .chain([&ADMIN_PAGE, &WIDGET])
        .map(|asset| {
            let digest = Sha256::digest(asset.body.as_bytes());
            let tag = format!("\"{}\"", crate::hex(&digest[..12]));
            (asset.name, HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\"")))
        })
        .collect()
});

fn etag_of(asset: &Asset) -> HeaderValue {
    ETAGS
        .iter()
        .find(|(name, _)| *name == asset.name)
        .map_or_else(|| HeaderValue::from_static("\"0\""), |(_, tag)| tag.clone())
}

/// The asset, or 304 when `If-None-Match` names its ETag.
fn serve(asset: &Asset, request_headers: &HeaderMap) -> Response {
    let tag = etag_of(asset);
    let unchanged = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == tag));
    let mut response = if unchanged { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    if !unchanged {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    headers.insert(header::ETAG, tag);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if asset.cross_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_its_own_etag() {
        let tags: std::collections::BTreeSet<String> =
            ETAGS.iter().map(|(_, tag)| tag.to_str().unwrap_or_default().to_owned()).collect();
        assert_eq!(tags.len(), UI_ASSETS.len() + 2);
        assert!(tags.iter().all(|tag| tag.len() == 26 && tag.starts_with('"') && tag.ends_with('"')), "{tags:?}");
    }

    #[test]
    fn a_matching_if_none_match_answers_304_without_a_body_type() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag_of(&WIDGET));
        let response = serve(&WIDGET, &headers);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert!(response.headers().get(header::CONTENT_TYPE).is_none());
        assert_eq!(response.headers().get(header::ETAG), Some(&etag_of(&WIDGET)));
        let fresh = serve(&WIDGET, &HeaderMap::new());
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(fresh.headers().get(header::CONTENT_TYPE), Some(&HeaderValue::from_static(JAVASCRIPT)));
        assert_eq!(fresh.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(&HeaderValue::from_static("*")));
    }

    #[test]
    fn the_pages_load_only_what_is_embedded() {
        // Every relative asset the page and scripts name is served here: no
        // CDN, nothing a user has to build.
        let page = ADMIN_PAGE.body;
        for name in ["ui/admin.css", "ui/admin.js", "ui/favicon.svg"] {
            assert!(page.contains(name), "admin.html does not load {name}");
        }
        assert!(!page.contains("http://") && !page.contains("https://"), "admin.html loads from another host");
        assert!(UI_ASSETS.iter().find(|a| a.name == "admin.js").is_some_and(|a| a.body.contains("./api-client.js")));
        assert!(WIDGET.body.contains("ui/api-client.js"));
    }
}
