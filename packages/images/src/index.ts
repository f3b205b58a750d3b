export { ImageError } from './errors';
export { checkImage, type FormatReport, type CheckLimits } from './checks';
export { IntervalSet, parseRange, parseContentRange, type Interval } from './ranges';
export { Ticket, type TicketOp, type TicketRequest, type TicketStatus, type TicketState, type ImportProgress } from './tickets';
export { ImageService, type ImageServiceOptions, type Extent } from './service';
export { redactUrl, type ImportRequest } from './importer';
export { createImageServer, imagesPlugin, isLoopback, MAX_CONNECTIONS, type ImageServer, type ImageServerOptions, type ImagesPluginOptions, type TicketApi } from './server';
export { ImageEndpoint, ImageClientError, uploadImage, downloadImage, readCa, type EndpointOptions, type TransferOptions, type UploadResult, type DownloadResult } from './client';
export { registerImageCommands, DEFAULT_SERVER } from './cli';
