"""What pedseg's Flower apps share: the ServerApp (`server`), the ClientApp (`client`) and the launchers that
submit them (`simulations`) import it; it imports `pedseg_core` only."""
