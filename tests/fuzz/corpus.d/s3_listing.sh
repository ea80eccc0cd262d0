#!/usr/bin/env bash
# seeds for fuzz_s3_listing: S3 XML answers as RGW and AWS send them
set -eu
out=$1/s3_listing
mkdir -p "$out"
cat >"$out/list" <<'XML'
<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>keel-test</Name><Prefix>vms/vm1/index/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken><Contents><Key>vms/vm1/index/0a1b</Key><LastModified>2026-11-22T03:12:05.123Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>6234</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>vms/vm1/index/ff&amp;</Key><LastModified>2026-11-22T03:12:06Z</LastModified><Size>1</Size></Contents></ListBucketResult>
XML
printf '<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code><Message></Message><BucketName>x</BucketName></Error>' >"$out/error"
printf '2026-11-22T03:12:05.123456789Z' >"$out/time"
