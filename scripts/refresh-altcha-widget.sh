#!/bin/sh
# Refreshes the ALTCHA widget shipped in service/static/ (the sign-up form's bot check;
# no CDN: the pages load it from the service itself). Usage:
#   scripts/refresh-altcha-widget.sh [VERSION]      (or: make altcha-widget ALTCHA_VERSION=...)
# npm pack downloads the tarball from registry.npmjs.org and checks it against the
# registry's integrity hash; the UMD build is taken (a classic script: a form on
# another origin can load it without CORS), with its licence, and the note
# service/static/altcha.README.md records the version, source and sha256.
# After a major version: check that the Python `altcha` package verifies its payloads
# (tests/signup/test_botcheck_browser.py) and measure again (bench/bench_altcha.py).
set -eu
version="${1:-3.2.2}"
static="$(cd "$(dirname "$0")/.." && pwd)/service/static"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "altcha@$version" >/dev/null
tar xzf "altcha-$version.tgz"
test "$(sed -n 's/^[[:space:]]*"version": "\(.*\)",$/\1/p' package/package.json)" = "$version"
integrity="$(npm view "altcha@$version" dist.integrity)"
cp package/dist/main/altcha.umd.min.cjs "$static/altcha.min.js"
cp package/LICENSE.txt "$static/altcha.LICENSE.txt"
sha256="$(sha256sum "$static/altcha.min.js" | cut -d' ' -f1)"
cat > "$static/altcha.README.md" <<NOTE
# The ALTCHA widget shipped with the service

- package: \`altcha\` $version on npm (MIT, licence in \`altcha.LICENSE.txt\`),
  https://registry.npmjs.org/altcha/-/altcha-$version.tgz
- tarball integrity (npm): \`$integrity\`
- file: \`dist/main/altcha.umd.min.cjs\` of the tarball, shipped as \`altcha.min.js\`
- sha256 of \`altcha.min.js\`: \`$sha256\`
- refreshed by \`scripts/refresh-altcha-widget.sh\` (\`make altcha-widget\`)
NOTE
echo "altcha $version -> $static/altcha.min.js ($sha256)"
