// Scenario matrix (test/scenarios.mjs) for the pairing "pc-http2-gateway+our-relay" (lib/pairings.mjs).
import { defineSuite } from "./scenarios.mjs";

defineSuite("pc-http2-gateway+our-relay");
