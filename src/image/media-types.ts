/**
 * The OCI and Docker media types envy understands, and what each means for it:
 * which documents are indexes (pick a platform), which are image manifests,
 * and how each layer blob is compressed.
 */
import { EnvyError } from '../errors.js';

export const MediaType = {
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  OciLayer: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OciLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OciLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  DockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/**
 * Every manifest type envy can read, sent on every manifest request: a registry
 * answers an OCI manifest without it with 404 and downgrades Docker v2s2 to
 * schema 1 (MACHINE-FACTS).
 */
export const MANIFEST_ACCEPT = [MediaType.OciIndex, MediaType.OciManifest, MediaType.DockerManifestList, MediaType.DockerManifest].join(', ');

export type ManifestKind = 'index' | 'manifest';

export function manifestKind(mediaType: string | undefined, document: unknown, where: string): ManifestKind {
  const type = mediaType?.split(';')[0]?.trim() || (document as { mediaType?: string } | undefined)?.mediaType;
  if (type === MediaType.OciIndex || type === MediaType.DockerManifestList) return 'index';
  if (type === MediaType.OciManifest || type === MediaType.DockerManifest) return 'manifest';
  if (type === MediaType.DockerSchema1Signed || type === 'application/vnd.docker.distribution.manifest.v1+json') {
    throw new EnvyError('IMAGE', `${where} is a Docker schema 1 manifest, which envy does not support`, {
      hint: 'push the image again with a current docker/podman/skopeo (schema 2 or OCI)',
    });
  }
  // OCI allows a missing mediaType: decide by shape.
  if (type === undefined && document && typeof document === 'object') {
    if (Array.isArray((document as { manifests?: unknown }).manifests)) return 'index';
    if (Array.isArray((document as { layers?: unknown }).layers)) return 'manifest';
  }
  throw new EnvyError('IMAGE', `${where} has unsupported media type ${type ?? '(none)'}`, {
    hint: `envy reads ${MANIFEST_ACCEPT}`,
  });
}

export type Compression = 'gzip' | 'zstd' | 'none';

/** How a layer blob is compressed, from its media type. */
export function layerCompression(mediaType: string, where: string): Compression {
  switch (mediaType) {
    case MediaType.OciLayerGzip:
    case MediaType.OciLayerNondistributableGzip:
    case MediaType.DockerLayerGzip:
    case MediaType.DockerForeignLayerGzip:
      return 'gzip';
    case MediaType.OciLayerZstd:
    case 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd':
      return 'zstd';
    case MediaType.OciLayer:
    case 'application/vnd.oci.image.layer.nondistributable.v1.tar':
    case 'application/vnd.docker.image.rootfs.diff.tar':
      return 'none';
    default:
      throw new EnvyError('IMAGE', `${where} has unsupported layer media type ${mediaType}`, {
        hint: 'envy unpacks tar layers: uncompressed, gzip or zstd',
      });
  }
}

/** Compression from a blob's first bytes: archives name layers by file, not media type. */
export function sniffCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}
