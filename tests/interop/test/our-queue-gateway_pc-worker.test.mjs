// Scenario matrix (test/scenarios.mjs) for the pairing "our-queue-gateway+pc-worker" (lib/pairings.mjs).
import { defineSuite } from "./scenarios.mjs";

defineSuite("our-queue-gateway+pc-worker");
