/*
 * A real OpenID provider for the SSO tests: the `oidc-provider` npm package
 * (an OpenID-certified implementation) on 127.0.0.1 and a free port, with its
 * own development login and consent pages ("devInteractions": any password
 * is accepted, the login names the account) and a few test users in groups.
 */
import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, freePort } from './lib.mjs';

let Provider;
try {
  ({ default: Provider } = await import('oidc-provider'));
} catch {
  ({ default: Provider } = await import(pathToFileURL(path.join(ROOT, 'tests/node/node_modules/oidc-provider/lib/index.js')).href));
}

/**
 * Test users: login name (the subject, `sub`) → claims (the `groups` claim
 * drives Airlock's roles). Read at every sign-in, so a test may change them.
 */
export const USERS = {
  alice: { email: 'alice@example.com', name: 'Alice Approver', groups: ['airlock-approvers', 'staff'] },
  vic: { email: 'vic@example.com', name: 'Vic Viewer', groups: ['airlock-viewers'] },
  ada: { email: 'ada@example.com', name: 'Ada Admin', groups: ['airlock-viewers', 'airlock-admins'] },
  mallory: { email: 'mallory@example.com', name: 'Mallory Outsider', groups: ['contractors'] },
  carl: { email: 'carl@example.com', name: 'Carl Approver', groups: ['airlock-approvers'] },
  // A second account that sends alice's email and name (another subject):
  // a distinct voter under the same display name.
  'alice-twin': { email: 'alice@example.com', name: 'Alice Approver', groups: ['airlock-approvers'] },
  // Tests may change ren's email between sign-ins (claims are read at each sign-in).
  ren: { email: 'ren@example.com', name: 'Ren Renamed', groups: ['airlock-approvers'] },
};

/**
 * Starts the provider. `redirectUris` / `postLogoutUris` are the client's
 * registered URLs; `claimsInIdToken: false` leaves the groups to userinfo. Resolves to { issuer, clientId, clientSecret, close, ended }
 * where `ended` lists the `id_token_hint` subjects of end-session requests seen.
 */
export async function startIdp({ redirectUris, postLogoutUris = [], clientId = 'airlock', clientSecret = 'airlock-test-secret-0123456789', claimsInIdToken = true }) {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const ended = [];
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    // true: the scopes' claims (email, groups) go in the ID token itself;
    // false: the ID token carries only `sub`, and the claims come from the
    // userinfo endpoint (the spec's default when an access token is issued).
    conformIdTokenClaims: !claimsInIdToken,
    findAccount: async (_ctx, id) => {
      const user = USERS[id];
      if (!user) return undefined;
      return {
        accountId: id,
        claims: async () => ({ sub: id, email: user.email, email_verified: true, name: user.name, groups: user.groups }),
      };
    },
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    ttl: { Session: 3600, Interaction: 600, Grant: 3600, AuthorizationCode: 60, IdToken: 3600, AccessToken: 3600 },
  });
  provider.on('end_session.success', (ctx) => ended.push(ctx.oidc?.session?.accountId ?? 'unknown'));
  const server = http.createServer(provider.callback());
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    issuer,
    clientId,
    clientSecret,
    ended,
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}

// `node tests/e2e/idp.mjs http://127.0.0.1:8080/auth/oidc/callback` runs one by hand.
if (import.meta.url === pathToFileURL(process.argv[1] || '').href) {
  const idp = await startIdp({ redirectUris: [process.argv[2] || 'http://127.0.0.1:8080/auth/oidc/callback'], postLogoutUris: [process.argv[3] || 'http://127.0.0.1:8080/login'] });
  console.log(`issuer ${idp.issuer} client ${idp.clientId} secret ${idp.clientSecret}`);
}
