//! `[[hook]]` tables: more registries, each with its provider and authentication.

use super::*;

/// A `[[hook]]` table and how its keys are named in errors (`hook[2].secret`).
struct At<'a> {
    hook: &'a Spanned<RawHook>,
    name: String,
}

impl At<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.name)
    }
}

impl Parser<'_> {
    pub(super) fn hook(
        &self,
        index: usize,
        hook: &Spanned<RawHook>,
        base: &Path,
    ) -> Result<HookSpec, ConfigError> {
        let raw = hook.get_ref();
        let at = At {
            hook,
            name: format!("hook[{index}]"),
        };
        let path = raw.path.get_ref();
        if let Err(problem) = Hook::check_path(path) {
            return Err(self.error_at(
                raw.path.span(),
                &at.key("path"),
                format!("{path:?}: {problem}"),
            ));
        }
        let provider = self.provider(&at)?;
        let api_keys = self.keys(&raw.api_keys, raw.api_keys_file.as_ref(), &at.name, base)?;
        let signed = matches!(provider, Provider::GitHub { .. })
            || matches!(&provider, Provider::Generic(g) if g.signature.is_some());
        if api_keys.is_empty() && !signed && !raw.allow_unauthenticated {
            return Err(self.error_at(hook.span(), &at.key("api_keys"), format!(
                "no API key for this hook: set api_keys or api_keys_file{}, or allow_unauthenticated = true",
                if raw.provider == ProviderName::Registry {
                    " (the registry sends it with `headers: Authorization: [Bearer <key>]`)"
                } else {
                    ""
                }
            )));
        }
        // A registry notification's host comes from the pusher's Host header: the hook
        // says which registry its images live on instead.
        let registry = match (&provider, &raw.registry) {
            (Provider::Registry, _) => {
                let host = self.required(
                    &at,
                    &raw.registry,
                    "registry",
                    "(the host its images live on, like \"registry.example.com\" or \"127.0.0.1:5000\")",
                )?;
                // The reference grammar's own rule: what `docker pull host/repo` takes.
                let named = format!("{host}/x");
                let (found, _) = hubhook_core::reference::split_registry(&named);
                if found != Some(host.as_str())
                    || hubhook_core::reference::check_name(&named).is_err()
                {
                    let span = raw.registry.as_ref().map_or(hook.span(), Spanned::span);
                    return Err(self.error_at(span, &at.key("registry"), format!(
                        "{host:?} is not a registry host: write it as `docker push` does, like \"registry.example.com\" or \"127.0.0.1:5000\" (no scheme, no path)"
                    )));
                }
                Some(host)
            }
            (_, Some(r)) => {
                return Err(self.error_at(
                    r.span(),
                    &at.key("registry"),
                    "applies to provider = \"registry\" only".into(),
                ))
            }
            (_, None) => None,
        };
        Ok(HookSpec {
            path: path.clone(),
            provider,
            api_keys: Keys(api_keys),
            allow_unauthenticated: raw.allow_unauthenticated,
            registry,
        })
    }

    /// The hook's provider, with what it needs: GitHub's secret, generic's pointers.
    fn provider(&self, at: &At<'_>) -> Result<Provider, ConfigError> {
        let raw = at.hook.get_ref();
        Ok(match raw.provider {
            ProviderName::DockerHub => Provider::DockerHub,
            ProviderName::Registry => Provider::Registry,
            ProviderName::GitHub => Provider::GitHub {
                secret: self.required(at, &raw.secret, "secret", "(the GitHub webhook secret)")?,
            },
            ProviderName::Generic => {
                self.pointer(at, &raw.repo_pointer, "repo_pointer")?;
                self.pointer(at, &raw.tag_pointer, "tag_pointer")?;
                let mut generic = Generic::new(
                    self.required(
                        at,
                        &raw.repo_pointer,
                        "repo_pointer",
                        "(a JSON pointer to the repository)",
                    )?,
                    self.required(
                        at,
                        &raw.tag_pointer,
                        "tag_pointer",
                        "(a JSON pointer to the tag)",
                    )?,
                );
                if let Some(p) = self.pointer(at, &raw.digest_pointer, "digest_pointer")? {
                    generic = generic.digest(p);
                }
                if let Some(header) = &raw.signature_header {
                    let secret = self.required(
                        at,
                        &raw.secret,
                        "secret",
                        "(the HMAC secret of signature_header)",
                    )?;
                    generic = generic.signed(header.get_ref().clone(), secret);
                }
                Provider::Generic(generic)
            }
        })
    }

    /// A key the hook needs: present, not empty, and for a secret not a placeholder.
    fn required(
        &self,
        at: &At<'_>,
        value: &Option<Spanned<String>>,
        name: &str,
        why: &str,
    ) -> Result<String, ConfigError> {
        match value {
            None => Err(self.error_at(
                at.hook.span(),
                &at.key(name),
                format!("missing required key `{name}` {why}"),
            )),
            // An empty secret (or pointer) is no secret: anyone can compute that HMAC.
            Some(v) if v.get_ref().is_empty() => Err(self.error_at(
                v.span(),
                &at.key(name),
                format!("`{name}` must not be empty"),
            )),
            // The docs' "<the secret set on GitHub>" must not become a published secret;
            // the value is not echoed, in case a real secret kept its brackets.
            Some(v) if name == "secret" && auth::is_placeholder(v.get_ref()) => Err(self.error_at(
                v.span(),
                &at.key(name),
                "still the placeholder (a value in <angle brackets>, or dots): put the secret the sender signs with here".into(),
            )),
            Some(v) => Ok(v.get_ref().clone()),
        }
    }

    /// A JSON pointer key, when set: it starts with `/`.
    fn pointer(
        &self,
        at: &At<'_>,
        value: &Option<Spanned<String>>,
        name: &str,
    ) -> Result<Option<String>, ConfigError> {
        match value {
            Some(p) if !p.get_ref().starts_with('/') => Err(self.error_at(
                p.span(),
                &at.key(name),
                format!(
                    "{:?} is not a JSON pointer (like \"/repository/name\")",
                    p.get_ref()
                ),
            )),
            other => Ok(other.as_ref().map(|p| p.get_ref().clone())),
        }
    }
}
