// Scenario matrix (test/scenarios.mjs) for the pairing "our-stdio-gateway+pc-host" (lib/pairings.mjs).
import { defineSuite } from "./scenarios.mjs";

defineSuite("our-stdio-gateway+pc-host");
