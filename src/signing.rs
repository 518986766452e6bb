//! The signatures behind every token: HMAC with SHA-2 (RFC 7518 §3.2),
//! and nothing else.
//!
//! `jsonwebtoken` parses tokens and checks their claims; the cryptography
//! comes from a provider. Its ready-made `rust_crypto` provider carries
//! every JWS algorithm, RSA, ECDSA and Ed25519 included: half a megabyte of
//! the binary for keys this server never holds, since it signs and checks
//! its own tokens with its own secret (HS256). This provider has the HMAC
//! family only, on the `hmac` and `sha2` crates. Any other algorithm is
//! refused before a key is looked at, so a token can never talk the server
//! into treating its secret as a public key ("algorithm confusion"), and
//! [`crate::auth`] accepts HS256 alone in any case.
//!
//! HS384 and HS512 are here so that one process can mint them (the tests
//! check that the server refuses them); the server's validation never
//! accepts them.

use std::sync::Once;

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error as SignatureError, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use sha2::{Sha256, Sha384, Sha512};

/// The provider; [`install`] makes it the process's.
static HMAC_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWK thumbprints and key conversions: not used by a server that
    // reads no JWKs (calling them panics, by `jsonwebtoken`'s design).
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes [`HMAC_ONLY`] the provider `jsonwebtoken` uses, once per process,
/// before the first token is signed or checked. If another was installed
/// first (only possible in a test or bench build, where the dev
/// dependencies switch on `jsonwebtoken`'s own), that one stays: it
/// computes the same HMACs.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = HMAC_ONLY.install_default();
    });
}

/// One HMAC key with its algorithm: signs, or checks a signature in
/// constant time (`Mac::verify_slice`).
enum Hs {
    S256(Hmac<Sha256>),
    S384(Hmac<Sha384>),
    S512(Hmac<Sha512>),
}

impl Hs {
    fn new(algorithm: Algorithm, family: AlgorithmFamily, key: &[u8]) -> Result<Hs> {
        if family != AlgorithmFamily::Hmac {
            return Err(ErrorKind::InvalidKeyFormat.into());
        }
        let bad_key = |_| ErrorKind::InvalidKeyFormat;
        Ok(match algorithm {
            Algorithm::HS256 => Hs::S256(Hmac::new_from_slice(key).map_err(bad_key)?),
            Algorithm::HS384 => Hs::S384(Hmac::new_from_slice(key).map_err(bad_key)?),
            Algorithm::HS512 => Hs::S512(Hmac::new_from_slice(key).map_err(bad_key)?),
            _ => return Err(ErrorKind::InvalidAlgorithm.into()),
        })
    }

    fn tag(&self, message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + Clone>(mac: &M, message: &[u8]) -> Vec<u8> {
            let mut mac = mac.clone();
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Hs::S256(mac) => run(mac, message),
            Hs::S384(mac) => run(mac, message),
            Hs::S512(mac) => run(mac, message),
        }
    }

    fn check(&self, message: &[u8], tag: &[u8]) -> std::result::Result<(), SignatureError> {
        fn run<M: Mac + Clone>(mac: &M, message: &[u8], tag: &[u8]) -> bool {
            let mut mac = mac.clone();
            mac.update(message);
            mac.verify_slice(tag).is_ok()
        }
        let good = match self {
            Hs::S256(mac) => run(mac, message, tag),
            Hs::S384(mac) => run(mac, message, tag),
            Hs::S512(mac) => run(mac, message, tag),
        };
        good.then_some(()).ok_or_else(SignatureError::new)
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            Hs::S256(_) => Algorithm::HS256,
            Hs::S384(_) => Algorithm::HS384,
            Hs::S512(_) => Algorithm::HS512,
        }
    }
}

impl Signer<Vec<u8>> for Hs {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, SignatureError> {
        Ok(self.tag(message))
    }
}

impl Verifier<Vec<u8>> for Hs {
    fn verify(&self, message: &[u8], tag: &Vec<u8>) -> std::result::Result<(), SignatureError> {
        self.check(message, tag)
    }
}

impl JwtSigner for Hs {
    fn algorithm(&self) -> Algorithm {
        Hs::algorithm(self)
    }
}

impl JwtVerifier for Hs {
    fn algorithm(&self) -> Algorithm {
        Hs::algorithm(self)
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(Hs::new(*algorithm, key.family(), key.as_bytes())?))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let bytes = key.try_get_as_bytes()?;
    Ok(Box::new(Hs::new(*algorithm, key.family(), bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 Appendix A.1: the HS256 example, its key and its signature.
    #[test]
    fn signs_and_checks_the_rfc_7515_example() {
        let key = [
            3u8, 35, 53, 75, 43, 15, 165, 188, 131, 126, 6, 101, 119, 123, 166, 143, 90, 179, 40,
            230, 240, 84, 201, 40, 169, 15, 132, 178, 210, 80, 46, 191, 211, 251, 90, 146, 210, 6,
            71, 239, 150, 138, 180, 195, 119, 98, 61, 34, 61, 46, 33, 114, 5, 46, 79, 8, 192, 205,
            154, 245, 103, 208, 128, 163,
        ];
        let signing_input = b"eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let expected = [
            116u8, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let hs = Hs::new(Algorithm::HS256, AlgorithmFamily::Hmac, &key).unwrap();
        assert_eq!(hs.tag(signing_input), expected);
        assert!(hs.check(signing_input, &expected).is_ok());
        let mut forged = expected;
        forged[0] ^= 1;
        assert!(hs.check(signing_input, &forged).is_err());
    }

    #[test]
    fn every_other_algorithm_is_refused() {
        for algorithm in [
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::PS256,
            Algorithm::EdDSA,
        ] {
            let refused = Hs::new(algorithm, AlgorithmFamily::Hmac, b"secret").err();
            assert_eq!(
                refused.map(|e| e.into_kind()),
                Some(ErrorKind::InvalidAlgorithm)
            );
        }
    }

    /// Through the provider's own factories, as `jsonwebtoken` calls them:
    /// in a test build `jsonwebtoken`'s own provider may have been
    /// installed first, so going through `encode`/`decode` might not reach
    /// this one.
    #[test]
    fn the_factories_sign_and_verify_the_hmac_family_only() {
        let key = b"a secret of thirty-two bytes ...";
        let encoding = EncodingKey::from_secret(key).unwrap();
        let decoding = DecodingKey::from_secret(key).unwrap();
        let other = DecodingKey::from_secret(b"another secret, also 32 bytes ..").unwrap();
        for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let signer = (HMAC_ONLY.signer_factory)(&algorithm, &encoding).unwrap();
            assert_eq!(signer.algorithm(), algorithm);
            let tag = signer.try_sign(b"header.claims").unwrap();
            let verifier = (HMAC_ONLY.verifier_factory)(&algorithm, &decoding).unwrap();
            assert!(verifier.verify(b"header.claims", &tag).is_ok());
            assert!(verifier.verify(b"header.claimz", &tag).is_err());
            let wrong = (HMAC_ONLY.verifier_factory)(&algorithm, &other).unwrap();
            assert!(wrong.verify(b"header.claims", &tag).is_err());
        }
        assert!((HMAC_ONLY.signer_factory)(&Algorithm::RS256, &encoding).is_err());
        assert!((HMAC_ONLY.verifier_factory)(&Algorithm::ES256, &decoding).is_err());
    }
}
