// Reads twins from an rmb-testchain (or tfchain) node with the polkadot.js API, the client the
// TypeScript RMB SDK uses, and follows finalized heads. Prints one JSON line per finding so the
// Rust test driving it can assert on them.
//
//   node check.mjs ws://127.0.0.1:9944 <twin id> <account hex> <heads to wait for>
import { ApiPromise, WsProvider } from '@polkadot/api';

const [url, twinId, account, heads] = process.argv.slice(2);
const out = (o) => console.log(JSON.stringify(o));

const provider = new WsProvider(url, false);
await provider.connect();
const api = await ApiPromise.create({ provider, throwOnConnect: true, noInitWarn: true });
out({ chain: (await api.rpc.system.chain()).toString(), spec: api.runtimeVersion.specName.toString() });

const twin = await api.query.tfgridModule.twins(Number(twinId));
const t = twin.unwrap();
out({
  twin: t.id.toNumber(),
  account: t.accountId.toHex(),
  relay: t.relay.isSome ? new TextDecoder().decode(t.relay.unwrap().toU8a(true)) : null,
  pk: t.pk.isSome ? t.pk.unwrap().toHex() : null,
});
const id = await api.query.tfgridModule.twinIdByAccountID(account);
out({ twinIdByAccount: id.isSome ? id.unwrap().toNumber() : null });
out({ missing: (await api.query.tfgridModule.twins(4000000)).isNone });

let seen = 0;
const unsub = await api.rpc.chain.subscribeFinalizedHeads(async (header) => {
  const events = await (await api.at(header.hash)).query.system.events();
  out({
    finalized: header.number.toNumber(),
    hash: header.hash.toHex(),
    events: events.map((e) => `${e.event.section}.${e.event.method}`),
  });
  seen += 1;
  if (seen >= Number(heads)) {
    unsub();
    await api.disconnect();
    process.exit(0);
  }
});
