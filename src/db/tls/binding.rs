//! SCRAM channel binding (`tls-server-end-point`, RFC 5929): the hash of the server's certificate,
//! with the hash function of the certificate's own signature (SHA-256 for MD5 and SHA-1). With it,
//! SCRAM-SHA-256-PLUS proves that the server the password was checked by is the one at the end of the
//! TLS session, which defeats a man in the middle even under `sslmode=require`.
//!
//! Only the signature algorithm is read from the certificate (a few DER headers); algorithms without a
//! single hash (RSA-PSS, Ed25519) give no binding, which PostgreSQL itself does not support either.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The `tls-server-end-point` data for a DER certificate, or `None` if its algorithm has no binding.
pub(super) fn server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    match hash_of(signature_algorithm(certificate)?)? {
        Hash::Sha256 => Some(Sha256::digest(certificate).to_vec()),
        Hash::Sha384 => Some(Sha384::digest(certificate).to_vec()),
        Hash::Sha512 => Some(Sha512::digest(certificate).to_vec()),
    }
}

enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// Maps a signature algorithm OID (its DER content bytes) to the hash RFC 5929 prescribes.
fn hash_of(oid: &[u8]) -> Option<Hash> {
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03]; // 1.2.840.10045.4.3
    match (oid.strip_prefix(PKCS1), oid.strip_prefix(ECDSA)) {
        (Some([0x04 | 0x05 | 0x0b]), _) | (_, Some([0x02])) => Some(Hash::Sha256), // md5, sha1, sha256
        (Some([0x0c]), _) | (_, Some([0x03])) => Some(Hash::Sha384),
        (Some([0x0d]), _) | (_, Some([0x04])) => Some(Hash::Sha512),
        _ => None,
    }
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, ... }`:
/// the OID's content bytes.
fn signature_algorithm(certificate: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = element(certificate, 0x30)?;
    let (_tbs, rest) = element(certificate, 0x30)?;
    let (algorithm, _) = element(rest, 0x30)?;
    Some(element(algorithm, 0x06)?.0)
}

/// Reads one DER element with `tag` at the start of `input`: (its content, what follows it).
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&length, rest) = rest.split_first()?;
    let (length, rest) = if length < 0x80 {
        (usize::from(length), rest)
    } else {
        // Long form: the low bits say how many length bytes follow (certificates need at most 4).
        let count = usize::from(length & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        (bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b)), rest)
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER certificate skeleton: SEQUENCE { tbs, SEQUENCE { OID }, BIT STRING }.
    fn certificate(tbs_len: usize, oid: &[u8]) -> Vec<u8> {
        let mut tbs = vec![0x30, 0x82, (tbs_len >> 8) as u8, tbs_len as u8];
        tbs.resize(4 + tbs_len, 0xab);
        let mut algorithm = vec![0x30, (oid.len() + 2) as u8, 0x06, oid.len() as u8];
        algorithm.extend_from_slice(oid);
        let body: Vec<u8> = [tbs, algorithm, vec![0x03, 0x01, 0x00]].concat();
        let mut der = vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8];
        der.extend(body);
        der
    }

    const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const RSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];

    #[test]
    fn the_certificate_is_hashed_with_its_signature_hash_and_sha1_becomes_sha256() {
        let der = certificate(300, ECDSA_SHA384);
        assert_eq!(server_end_point(&der), Some(Sha384::digest(&der).to_vec()));
        let der = certificate(40, RSA_SHA1);
        assert_eq!(server_end_point(&der), Some(Sha256::digest(&der).to_vec()));
    }

    #[test]
    fn algorithms_without_one_hash_and_broken_der_give_no_binding() {
        assert_eq!(server_end_point(&certificate(40, ED25519)), None);
        let der = certificate(300, ECDSA_SHA384);
        assert_eq!(server_end_point(&der[..200]), None);
        assert_eq!(server_end_point(&[]), None);
        assert_eq!(server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
