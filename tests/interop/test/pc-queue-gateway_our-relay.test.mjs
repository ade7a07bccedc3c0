// Scenario matrix (test/scenarios.mjs) for the pairing "pc-queue-gateway+our-relay" (lib/pairings.mjs).
import { defineSuite } from "./scenarios.mjs";

defineSuite("pc-queue-gateway+our-relay");
