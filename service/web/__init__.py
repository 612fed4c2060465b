"""What every page and route shares: rendering, the client's IP per IP_MODE, body limits, abuse limits, tokens read from paths, uvicorn's protocol."""
