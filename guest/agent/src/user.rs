//! Resolves the spec's user to ids: numeric ids are taken as they are; a
//! `username` is looked up in the container's own /etc/passwd and
//! /etc/group (the guest has no user database of its own).

use std::path::Path;

/// Errors resolving a user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {user:?} not found in the container's /etc/passwd")]
    UnknownUser { user: String },
}

/// Who the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Parses passwd text for `name` (or a numeric uid given as a name):
/// (uid, gid).
fn find_passwd(passwd: &str, name: &str) -> Option<(String, u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        (f[0] == name || f[2] == name)
            .then(|| Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Supplementary groups listing `name` as a member.
fn member_groups(group: &str, name: &str) -> Vec<u32> {
    group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || !f[3].split(',').any(|m| m == name) {
                return None;
            }
            f[2].parse().ok()
        })
        .collect()
}

/// Resolves `user` against the rootfs at `rootfs` (host path).
pub fn resolve(user: &oci_spec::runtime::User, rootfs: &Path) -> Result<ResolvedUser, UserError> {
    let mut groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    let (uid, gid) = match user.username().as_deref().filter(|n| !n.is_empty()) {
        None => (user.uid(), user.gid()),
        Some(name) => {
            let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
            let (login, uid, gid) = find_passwd(&passwd, name).ok_or(UserError::UnknownUser {
                user: name.to_string(),
            })?;
            let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
            groups.extend(member_groups(&group, &login));
            (uid, gid)
        }
    };
    groups.sort_unstable();
    groups.dedup();
    Ok(ResolvedUser { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\nbad line\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:nobody,alice\nwheel:x:10:alice\n";

    #[test]
    fn finds_users_by_name_or_uid() {
        assert_eq!(
            find_passwd(PASSWD, "nobody"),
            Some(("nobody".into(), 65534, 65534))
        );
        assert_eq!(find_passwd(PASSWD, "0"), Some(("root".into(), 0, 0)));
        assert_eq!(find_passwd(PASSWD, "alice"), None);
        assert_eq!(member_groups(GROUP, "alice"), vec![100, 10]);
    }

    #[test]
    fn unknown_user_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("skiff-user-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.join("etc/group"), GROUP).unwrap();
        let user: oci_spec::runtime::User =
            serde_json::from_str(r#"{"uid":0,"gid":0,"username":"ghost"}"#).unwrap();
        let err = resolve(&user, &dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"ghost\" not found in the container's /etc/passwd"
        );
        let user: oci_spec::runtime::User =
            serde_json::from_str(r#"{"uid":0,"gid":0,"username":"nobody","additionalGids":[5]}"#)
                .unwrap();
        assert_eq!(
            resolve(&user, &dir).unwrap(),
            ResolvedUser {
                uid: 65534,
                gid: 65534,
                groups: vec![5, 100]
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
