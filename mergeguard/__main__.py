from mergeguard.cli import main

if __name__ == "__main__":  # not when a worker process (spawn) imports this as __mp_main__
    raise SystemExit(main())
